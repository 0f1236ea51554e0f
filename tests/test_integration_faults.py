"""
Integration tests of the fault cases of issue 8 on the real reactor, with real
processes: commands that exit at once (a service's Command, a
HealthcheckCommand, a KillCommand, a CheckCommand), 100 times over through the
real L{Supervisor}, and CheckCommands printing garbage through the real
C{twistd -n lmproxy}.  Each loop waits on conditions with deadlines; none
asserts a duration.
"""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path
from typing import Any, TypeVar, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from lmproxy.config import Config, ResourceConfig, ServiceConfig
from lmproxy.core.readiness import ReadinessReactor
from lmproxy.core.supervisor import Supervisor
from lmproxy.interfaces import ILease, ServiceState, ServiceUnavailable
from tests.harness import Lmproxy, free_ports, http, pid_alive, raw_connect, wait_for

STARTS = 100
DEADLINE = 10.0  # for any one step: far more than any takes, even on a busy machine
_T = TypeVar("_T")


async def within(d: Deferred[_T], what: str) -> _T:
    """C{d}'s result, or a failure naming C{what} after L{DEADLINE} seconds."""
    try:
        return await d.addTimeout(DEADLINE, reactor)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class FastExitLoopTests(TestCase):
    """100 starts of each case through a real supervisor: every one ends as it must."""

    timeout = 120

    def setUp(self) -> None:
        # A port that accepts (and at once drops) connections: the "server".
        listening = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.port = listening.getHost().port
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir()

    def supervise(self, resources: tuple[ResourceConfig, ...] = (), **service: Any) -> Supervisor:
        values: dict[str, Any] = {
            "name": "s",
            "command": "sleep",
            "args": "1000",
            "proxy_target_host": "127.0.0.1",
            "proxy_target_port": self.port,
            "log_file_path": str(self.dir / "s.log"),
            "startup_timeout": 30.0,
        }
        values.update(service)
        config = Config(services=(ServiceConfig(**values),), resources=resources)
        supervisor = Supervisor(config, cast(ReadinessReactor, reactor))
        supervisor.startService()

        async def stop() -> None:
            await within(supervisor.stopService(), "the supervisor to stop")

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return supervisor

    async def start_and_stop(self, supervisor: Supervisor) -> None:
        """Start the service, stop it, and check that its process is gone; STARTS times."""
        for i in range(STARTS):
            lease: ILease = await within(supervisor.acquire("s"), f"start {i}")
            pid = supervisor.service_status("s").pid
            assert pid is not None
            lease.release()
            await within(supervisor.stop("s", False), f"stop {i}")
            # Off the stop's callbacks, which run inside the lifecycle's
            # transition: an acquire from there is not what this test is about.
            await deferLater(reactor, 0)
            self.assertEqual(supervisor.service_status("s").status, ServiceState.STOPPED)
            self.assertFalse(pid_alive(pid), f"pid {pid} left alive by stop {i}")

    async def test_command_exits_at_once(self) -> None:
        """
        C{"Command": "true"}: every start fails, saying so; the service is
        stopped with no pid each time; a stop answers and shutdown completes.
        """
        [dead] = free_ports(1)
        supervisor = self.supervise(command="true", args="", proxy_target_port=dead)
        for i in range(STARTS):
            with self.assertRaises(ServiceUnavailable) as raised:
                # A start action: tried at once, whatever the back-off.
                await within(supervisor.start("s"), f"start {i}")
            self.assertEqual(
                str(raised.exception),
                "service 's' failed to start: process exited with status 0 while starting",
            )
            await wait_for(
                lambda: supervisor.service_status("s").status is ServiceState.STOPPED,
                DEADLINE,
                f"the service to stop ({i})",
            )
            self.assertIsNone(supervisor.service_status("s").pid)
        self.assertEqual(supervisor.service_status("s").failed_starts, STARTS)
        await within(supervisor.stop("s", False), "a stop")

    async def test_healthcheck_exits_at_once(self) -> None:
        """C{"HealthcheckCommand": "true"}: every start succeeds."""
        await self.start_and_stop(self.supervise(healthcheck_command="true"))

    async def test_failing_healthcheck_is_retried(self) -> None:
        """
        A HealthcheckCommand that fails at once three times, then passes, at
        every start: every start succeeds after four runs, none ends early.
        """
        counter = self.dir / "runs"
        runs = shlex.quote(str(counter))
        check = (
            f"n=$(( $(cat {runs} 2>/dev/null || echo 0) + 1 )); echo $n > {runs}; "
            "[ $((n % 4)) -eq 0 ]"
        )
        await self.start_and_stop(
            self.supervise(healthcheck_command=check, healthcheck_interval=0.001)
        )
        self.assertEqual(int(counter.read_text()), 4 * STARTS)

    async def test_kill_command_exits_at_once(self) -> None:
        """C{"KillCommand": "true"}: every stop ends the service's process."""
        await self.start_and_stop(self.supervise(kill_command="true"))

    async def test_check_command_warns_then_prints(self) -> None:
        """
        A CheckCommand that warns on stderr, prints its value and exits at
        once: the value is read at every start (a service needing 5 starts).
        """
        runs = self.dir / "runs"
        check = f"echo run >> {shlex.quote(str(runs))}; echo 'warning: something' >&2; echo 7"
        resources = (ResourceConfig("R", None, check_command=check, check_interval=0.01),)
        supervisor = self.supervise(resources, resource_requirements={"R": 5})
        with capturedLogs() as events:
            await self.start_and_stop(supervisor)
        self.assertEqual(supervisor.resource_status("R").measured, 7)
        self.assertGreaterEqual(len(runs.read_text().splitlines()), STARTS)
        self.assertEqual([e for e in events if "gave no value" in e.get("log_format", "")], [])


BAD_CHECKS = {
    "garbage": "echo 'no GPU found'",
    "failing": "echo 5; exit 3",
    "huge": "printf '1%.0s' $(seq 401); echo",
    "nothing": "true",
    "stderr only": "echo 'warning: no value' >&2",
}


class BadCheckCommandTests(TestCase):
    """CheckCommands that give no value, through C{twistd -n lmproxy}."""

    timeout = 60

    async def test_every_endpoint_answers(self) -> None:
        """
        Each bad CheckCommand is one warning line naming its resource, no
        traceback; /status shows no value; /metrics and the services' ports answer.
        """
        management, listen = free_ports(2)
        config = {
            "ManagementApi": {"ListenPort": str(management)},
            "ResourcesAvailable": {
                name.replace(" ", "_"): {"CheckCommand": command}
                for name, command in BAD_CHECKS.items()
            },
            "Services": [
                {
                    "Name": "quick",
                    "ListenPort": str(listen),
                    "ProxyTargetPort": str(free_ports(1)[0]),
                    "Command": "true",
                }
            ],
        }
        lmproxy = Lmproxy(self, config)
        await lmproxy.start()
        names = [name.replace(" ", "_") for name in BAD_CHECKS]
        await wait_for(
            lambda: all(f"resource {n} gave no value" in lmproxy.output for n in names),
            DEADLINE,
            "a warning for every CheckCommand",
        )
        status, _, body = await http("GET", f"http://127.0.0.1:{management}/status")
        self.assertEqual(status, 200)
        resources = json.loads(body)["resources"]
        self.assertEqual({n: resources[n]["measured"] for n in names}, dict.fromkeys(names))
        status, _, body = await http("GET", f"http://127.0.0.1:{management}/metrics")
        self.assertEqual(status, 200)
        self.assertIn(b"lmproxy_resource", body)
        # A service whose Command exits at once: its client is closed, and again.
        for _ in range(3):
            client = await raw_connect(listen)
            await within(client.closed, "the client to be closed")
        status, _, _ = await http("POST", f"http://127.0.0.1:{management}/services/quick/stop")
        self.assertEqual(status, 200)
        self.assertEqual(await lmproxy.stop(signal.SIGINT), 0)
        output = lmproxy.output
        self.assertNotIn("Traceback", output)
        self.assertEqual(output.count("resource huge gave no value"), 1)
        self.assertIn("resource stderr_only wrote to stderr: warning: no value", output)
        self.assertIn("resource failing gave no value: it failed (exited with status 3)", output)
