"""
Integration tests of issue 9's "nothing outlives lmproxy", with a real
C{twistd -n lmproxy} and real processes: a service whose command double-forks
a grandchild that calls C{setsid} (it leaves the service's process group and
session, and is re-parented when its parent exits) is ended when the service
stops, and when lmproxy stops (SIGINT, SIGTERM) or dies (SIGKILL).
After SIGKILL, the watchdog child also ends running HealthcheckCommands and
CheckCommands with their children, and runs the KillCommand of each service
that was running.  A stray process on a service's target port makes its start
fail at once, with that reason in C{/status}.

Every wait has a deadline; no test asserts a duration.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.harness import Lmproxy, free_ports, http, pid_alive, raw_connect, wait_for

DEADLINE = 30.0  # for any one step: far more than any takes, even on a busy machine

ESCAPER = """\
import os, socket, sys, time

port, pid_file = int(sys.argv[1]), sys.argv[2]
if os.fork() == 0:
    if os.fork() == 0:
        # The grandchild: a session (and group) of its own, its parent gone.
        os.setsid()
        with open(pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pid_file + ".tmp", pid_file)
        if sys.argv[3:] == ["clear"]:  # no mark left: an empty environment
            os.execve("/bin/sleep", ["sleep", "600"], {})
        time.sleep(600)
    os._exit(0)
os.wait()
while not os.path.exists(pid_file):  # ready once the daemon is there
    time.sleep(0.01)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen()
while True:
    server.accept()[0].close()
"""
"""A model server that leaves a daemon behind: it serves once the daemon's pid is written."""

WITH_CHILD = "sleep 600 & echo $! > {pid_file}; wait"
"""A helper command that runs for ever, with a child in its group; it writes the child's pid."""


def _gone(pid: int) -> bool:
    """Not alive (a zombie counts as gone: only its exit status is left)."""
    return not pid_alive(pid)


def _reaped(pid: int) -> bool:
    """Gone for good: not even a zombie."""
    return not os.path.exists(f"/proc/{pid}")


def _kill_if_alive(pid: int) -> None:
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Containment:
    """A real lmproxy with one escaping service, in a test's directory."""

    def __init__(self, test: TestCase, **service: Any) -> None:
        self.test = test
        self.listen, self.target, self.management = free_ports(3)
        self.work = Path(test.mktemp()).resolve()
        self.work.mkdir(parents=True)
        script = self.work / "escaper.py"
        script.write_text(ESCAPER)
        self.pid_file = self.work / "grandchild.pid"
        entry: dict[str, Any] = {
            "Name": "escaper",
            "ListenPort": str(self.listen),
            "ProxyTargetHost": "127.0.0.1",
            "ProxyTargetPort": str(self.target),
            "Command": sys.executable,
            "Args": f"{script} {self.target} {self.pid_file}",
            "WorkDir": str(self.work),
        }
        entry.update(service)
        self.config: dict[str, Any] = {
            "ManagementApi": {"ListenPort": str(self.management)},
            "Services": [entry],
        }

    async def start(self) -> Lmproxy:
        lmproxy = Lmproxy(self.test, self.config)
        await lmproxy.start()
        self.lmproxy = lmproxy
        return lmproxy

    async def start_service(self) -> int:
        """Start the service through the management API; the grandchild's pid."""
        code, _, body = await http("POST", self.url("/services/escaper/start"), timeout=DEADLINE)
        self.test.assertEqual(code, 200, body)
        pid = int(self.pid_file.read_text())
        self.test.addCleanup(_kill_if_alive, pid)
        self.test.assertTrue(pid_alive(pid))
        return pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.management}{path}"

    async def status(self) -> dict[str, Any]:
        _, _, body = await http("GET", self.url("/status"))
        [service] = json.loads(body)["services"]
        return service


class ServiceStopTests(TestCase):
    """A service's daemon that left its group dies with the service."""

    timeout = 120

    async def test_stop_ends_the_grandchild(self) -> None:
        """
        After a stop, the grandchild is gone, and reaped (lmproxy, its
        subreaper, does not leave it a zombie).
        """
        case = Containment(self)
        lmproxy = await case.start()
        grandchild = await case.start_service()
        code, _, body = await http("POST", case.url("/services/escaper/stop"), timeout=DEADLINE)
        self.assertEqual(code, 200, body)
        await wait_for(lambda: _gone(grandchild), DEADLINE, "the grandchild to end")
        await wait_for(lambda: _reaped(grandchild), DEADLINE, "the grandchild to be reaped")
        self.assertEqual(await lmproxy.stop(), 0)


class QuitTests(TestCase):
    """lmproxy stopped by a signal: the grandchild does not outlive it."""

    timeout = 120

    async def quit_with(self, signum: int) -> None:
        case = Containment(self)
        lmproxy = await case.start()
        grandchild = await case.start_service()
        await lmproxy.stop(signum, timeout=DEADLINE)
        await wait_for(lambda: _gone(grandchild), DEADLINE, "the grandchild to end")

    async def test_sigint(self) -> None:
        await self.quit_with(signal.SIGINT)

    async def test_sigterm(self) -> None:
        await self.quit_with(signal.SIGTERM)

    async def test_grandchild_without_environment(self) -> None:
        """
        One that cleared its environment (no mark) was re-parented to
        lmproxy, a subreaper: it is killed once every service has stopped.
        """
        case = Containment(self)
        case.config["Services"][0]["Args"] += " clear"
        lmproxy = await case.start()
        grandchild = await case.start_service()
        await lmproxy.stop(signal.SIGTERM, timeout=DEADLINE)
        await wait_for(lambda: _gone(grandchild), DEADLINE, "the grandchild to end")
        self.assertIn(f"killed process {grandchild}, left behind", lmproxy.output)


class KilledTests(TestCase):
    """lmproxy killed with SIGKILL: its watchdog child cleans up after it."""

    timeout = 120

    async def test_grandchild_and_kill_command(self) -> None:
        """
        The grandchild is gone, and the service's KillCommand ran in its
        WorkDir (it writes a marker file there, by a relative path).
        """
        case = Containment(self, KillCommand="echo ran > kill-command-ran")
        lmproxy = await case.start()
        grandchild = await case.start_service()
        marker = case.work / "kill-command-ran"
        self.assertFalse(marker.exists())
        await lmproxy.stop(signal.SIGKILL, timeout=DEADLINE)
        await wait_for(lambda: _gone(grandchild), DEADLINE, "the grandchild to end")
        await wait_for(marker.exists, DEADLINE, "the KillCommand to run")
        self.assertEqual(marker.read_text(), "ran\n")

    async def test_no_kill_command_after_a_clean_stop(self) -> None:
        """lmproxy ran the KillCommand itself: the watchdog runs nothing more."""
        case = Containment(self, KillCommand="echo ran >> kill-command-ran")
        lmproxy = await case.start()
        await case.start_service()
        self.assertEqual(await lmproxy.stop(signal.SIGTERM, timeout=DEADLINE), 0)
        marker = case.work / "kill-command-ran"
        self.assertEqual(marker.read_text(), "ran\n")
        # The watchdog child reads EOF when lmproxy exits: by the time it has
        # exited too (it is lmproxy's only other process), it ran whatever it would.
        await wait_for(lambda: not _watchdogs_of(case.work), DEADLINE, "the watchdog to exit")
        self.assertEqual(marker.read_text(), "ran\n")

    async def test_running_healthcheck_and_its_child(self) -> None:
        """A HealthcheckCommand still running, and its child, end with lmproxy."""
        pid_file = "healthcheck-child.pid"
        case = Containment(self, HealthcheckCommand=WITH_CHILD.format(pid_file=pid_file))
        lmproxy = await case.start()
        client = await raw_connect(case.listen)  # starts the service: its healthcheck runs
        self.addCleanup(client.close)
        child = await _pid_from(case.work / pid_file, self)
        await lmproxy.stop(signal.SIGKILL, timeout=DEADLINE)
        await wait_for(lambda: _gone(child), DEADLINE, "the healthcheck's child to end")

    async def test_running_check_command_and_its_child(self) -> None:
        """A CheckCommand still running, and its child, end with lmproxy."""
        case = Containment(self, ResourceRequirements={"VRAM": 1})
        pid_file = case.work / "check-child.pid"
        case.config["ResourcesAvailable"] = {
            "VRAM": {"CheckCommand": WITH_CHILD.format(pid_file=pid_file)}
        }
        lmproxy = await case.start()  # the check runs at start-up
        child = await _pid_from(pid_file, self)
        await lmproxy.stop(signal.SIGKILL, timeout=DEADLINE)
        await wait_for(lambda: _gone(child), DEADLINE, "the CheckCommand's child to end")


class StrayListenerTests(TestCase):
    """A stray process on the target port: the start fails at once, and says why."""

    timeout = 120

    async def test_start_fails_naming_the_port(self) -> None:
        case = Containment(self, StartupTimeoutMilliseconds=600_000)
        stray = reactor.listenTCP(case.target, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(stray.stopListening)
        lmproxy = await case.start()
        # Not the startup timeout (10 minutes): the test's own timeout would end it first.
        code, _, body = await http("POST", case.url("/services/escaper/start"), timeout=DEADLINE)
        self.assertEqual(code, 503, body)
        reason = f"port {case.target} on 127.0.0.1 is already in use by another process"
        self.assertIn(reason, body.decode())
        status = await case.status()
        self.assertEqual(status["last_failure"]["reason"], reason)
        self.assertIn(reason, lmproxy.output)
        # Its command never ran: nothing of it could be taken for the stray.
        self.assertFalse(case.pid_file.exists())
        self.assertEqual(await lmproxy.stop(), 0)


async def _pid_from(path: Path, test: TestCase) -> int:
    """The pid a helper command wrote to C{path}, once it is there; killed at cleanup."""
    await wait_for(lambda: path.exists() and path.read_text().strip() != "", DEADLINE, str(path))
    pid = int(path.read_text())
    test.addCleanup(_kill_if_alive, pid)
    return pid


def _watchdogs_of(work: Path) -> list[int]:
    """Live watchdog children whose working directory is under C{work}'s test directory."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if b"lmproxy.core.reaper" in cmdline and cwd.startswith(str(work.parent.parent)):
            found.append(int(name))
    return [pid for pid in found if pid_alive(pid)]
