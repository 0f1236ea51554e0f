"""
Tests for L{lmproxy.reload.reloader.Reloader} (with fakes of what it drives)
and L{lmproxy.reload.watch.ConfigWatcher} (a real file, a fake clock).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, ConfigError, ServiceConfig
from lmproxy.interfaces import ReloadBusy, ReloadOutcome, ReloadRefused
from lmproxy.listen.sockets import PortsUnavailable
from lmproxy.reload.reloader import Factories, Reloader
from lmproxy.reload.watch import ConfigWatcher


def config(*names: str, port: int = 8080) -> Config:
    services = tuple(
        ServiceConfig(name=n, command="srv", proxy_target_port=9000 + i, listen_port=port + i)
        for i, n in enumerate(names)
    )
    return Config(services=services)


class Plan:
    def __init__(self, keys: Mapping[int, tuple[str, str]]) -> None:
        self.keys = dict(keys)
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeParts:
    """The supervisor, ports and surfaces, recording what the reloader asks, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.unavailable: list[str] = []
        self.applied: Deferred[None] = succeed(None)
        self.plans: list[Plan] = []

    def reconfigure(self, config: Config, force: bool = False) -> ReloadOutcome:
        self.calls.append(f"supervisor {len(config.services)} force={force}")
        return ReloadOutcome(unchanged=tuple(s.name for s in config.services))

    def prepare(self, keys: Mapping[int, tuple[str, str]]) -> Plan:
        self.calls.append(f"prepare {sorted(keys)}")
        if self.unavailable:
            raise PortsUnavailable(self.unavailable)
        self.plans.append(Plan(keys))
        return self.plans[-1]

    def apply(self, plan: Plan, factories: Factories) -> Deferred[None]:
        self.calls.append(f"apply {sorted(plan.keys)}")
        return self.applied


class FakeSurfaces:
    def __init__(self, parts: FakeParts) -> None:
        self.parts = parts

    def reconfigure(self, config: Config) -> Factories:
        self.parts.calls.append("surfaces")
        return {}


class ReloaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.parts = FakeParts()
        self.next: Config | ConfigError = config("A", "B")
        self.reloader = Reloader(
            "config.jsonc",
            "/cwd",
            config("A"),
            self.parts,
            self.parts,
            FakeSurfaces(self.parts),
            load=self.load,
        )

    def load(self, path: str | None, cwd: str) -> Config:
        self.assertEqual((path, cwd), ("config.jsonc", "/cwd"))
        if isinstance(self.next, ConfigError):
            raise self.next
        return self.next

    def test_applies_in_order(self) -> None:
        """Ports opened first, then the supervisor, the surfaces, the ports; logged."""
        with capturedLogs() as events:
            outcome = self.successResultOf(self.reloader.reload(True, "SIGHUP"))
        self.assertEqual(outcome, ReloadOutcome(unchanged=("A", "B")))
        self.assertEqual(
            self.parts.calls,
            ["prepare [8080, 8081]", "supervisor 2 force=True", "surfaces", "apply [8080, 8081]"],
        )
        self.assertIs(self.reloader.config, self.next)
        self.assertIn("SIGHUP: config reloaded: A, B unchanged", [formatEvent(e) for e in events])

    def test_invalid_config_changes_nothing(self) -> None:
        """Every problem is logged and returned; nothing is touched."""
        running = self.reloader.config
        self.next = ConfigError(["Services[0].Name: missing", "OpenAiApi.ListenPort: not a port"])
        with capturedLogs() as events:
            failure = self.failureResultOf(self.reloader.reload(), ReloadRefused)
        self.assertEqual(failure.value.problems, self.next.problems)
        self.assertEqual(self.parts.calls, [])
        self.assertIs(self.reloader.config, running)
        [text] = [formatEvent(e) for e in events]
        self.assertIn("not reloaded (the running one stays)", text)
        self.assertIn("  OpenAiApi.ListenPort: not a port", text)

    def test_port_unavailable_changes_nothing(self) -> None:
        """A port that cannot be opened refuses the reload before the supervisor hears of it."""
        self.parts.unavailable = ['Services[1] ("B").ListenPort 8081: address already in use']
        failure = self.failureResultOf(self.reloader.reload(), ReloadRefused)
        self.assertEqual(failure.value.problems, self.parts.unavailable)
        self.assertEqual(self.parts.calls, ["prepare [8080, 8081]"])

    def test_one_at_a_time(self) -> None:
        """While the ports of one reload close, another is refused; then it works again."""
        self.parts.applied = Deferred()
        first = self.reloader.reload()
        self.failureResultOf(self.reloader.reload(), ReloadBusy)
        self.parts.applied.callback(None)
        self.successResultOf(first)
        self.parts.applied = succeed(None)
        self.successResultOf(self.reloader.reload())

    def test_failed_apply_frees_the_next(self) -> None:
        self.parts.applied = Deferred()
        first = self.reloader.reload()
        self.parts.applied.errback(OSError("boom"))
        self.failureResultOf(first, OSError)
        self.parts.applied = succeed(None)
        self.successResultOf(self.reloader.reload())


class ConfigWatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.write("one")
        self.clock = Clock()
        self.reloads = 0
        self.watcher = ConfigWatcher(self.path, self.reload, self.clock)
        self.watcher.startService()
        self.addCleanup(self.watcher.stopService)

    def reload(self) -> None:
        self.reloads += 1

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)
        # A distinct mtime for each write (file systems round it).
        self.stamp = getattr(self, "stamp", 1_000_000_000_000) + 1_000_000_000
        os.utime(self.path, ns=(self.stamp, self.stamp))

    def polls(self, count: int) -> None:
        for _ in range(count):
            self.clock.advance(1)

    def test_nothing_changed(self) -> None:
        self.polls(5)
        self.assertEqual(self.reloads, 0)

    def test_change_reloads_once_settled(self) -> None:
        """Seen changed at one poll, reloaded at the next if it stayed the same."""
        self.write("two")
        self.polls(1)
        self.assertEqual(self.reloads, 0)
        self.write("three")  # still being written
        self.polls(1)
        self.assertEqual(self.reloads, 0)
        self.polls(1)
        self.assertEqual(self.reloads, 1)
        self.polls(5)
        self.assertEqual(self.reloads, 1)

    def test_same_text_again_does_nothing(self) -> None:
        """Saved again with the same text (a new mtime): nothing to reload."""
        self.write("one")
        self.polls(3)
        self.assertEqual(self.reloads, 0)

    def test_refused_text_not_tried_again(self) -> None:
        """A text tried once is not tried again until it changes."""
        self.write("bad")
        self.polls(2)
        self.write("bad")
        self.polls(2)
        self.assertEqual(self.reloads, 1)
        self.write("good")
        self.polls(2)
        self.assertEqual(self.reloads, 2)

    def test_replaced_by_rename(self) -> None:
        """An editor's save: a new file renamed over the old one."""
        other = self.path + ".new"
        with open(other, "w") as f:
            f.write("renamed")
        os.replace(other, self.path)
        self.polls(2)
        self.assertEqual(self.reloads, 1)

    def test_missing_for_a_while(self) -> None:
        """Gone (between an editor's delete and write): nothing; back changed: reloaded."""
        os.remove(self.path)
        self.polls(3)
        self.assertEqual(self.reloads, 0)
        self.write("back")
        self.polls(2)
        self.assertEqual(self.reloads, 1)
