"""
L{MemoryProcessReactor} against the real reactor, where lmproxy relies on the
fake behaving like the real reactor: a child that exits at once, a child that
has not made its process group yet, and a connection attempt given up.

The real child is made to exit "at once" deterministically: the protocol's
C{connectionMade} waits (C{waitid} with C{WNOWAIT}, which does not reap) until
the child has exited.  Twisted reaps it right after C{makeConnection}, still
inside C{spawnProcess}.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, NotConnectingError, UserError
from twisted.internet.interfaces import IConnector
from twisted.internet.protocol import ClientFactory, ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from lmproxy.core.shell import SETSID
from lmproxy.testing import MemoryProcessReactor, QuickExit
from tests.harness import free_ports

COMMAND = [SETSID, "/bin/sh", "-c", "echo 7; echo oops >&2; exit 3"]
CHILD_FDS: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}  # as lmproxy's shell commands


class Recorder(ProcessProtocol):
    """Records what a process protocol is told, and what its transport's pid is then."""

    def __init__(self, wait_for_exit: bool) -> None:
        self.wait_for_exit = wait_for_exit
        self.events: list[tuple[Any, ...]] = []
        self.ended: Deferred[None] = Deferred()

    def pid(self) -> str | None:
        pid = getattr(self.transport, "pid", None)
        return None if pid is None else "pid"

    def connectionMade(self) -> None:
        self.events.append(("connectionMade", self.pid()))
        pid = getattr(self.transport, "pid", None)
        if self.wait_for_exit and pid is not None:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.events.append(("data", childFD, data))

    def processExited(self, reason: Failure) -> None:
        self.events.append(("processExited", self.pid(), reason.value.exitCode))

    def processEnded(self, reason: Failure) -> None:
        self.events.append(("processEnded", self.pid(), reason.value.exitCode))
        self.ended.callback(None)


def merged(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """C{events} with the data of each descriptor joined (pipes deliver in any chunks)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if event[0] == "data" and out and out[-1][:2] == event[:2]:
            out[-1] = ("data", event[1], out[-1][2] + event[2])
        else:
            out.append(event)
    return out


EXPECTED = [
    ("connectionMade", "pid"),  # the pid is known here...
    ("processExited", None, 3),  # ...reaped inside spawnProcess, the pid cleared
    ("returned", None),  # spawnProcess returns a transport without a pid
]
EXPECTED_AFTER = [
    ("processEnded", None, 3),  # once the reactor has read the end of the pipes
]


class ExitDuringSpawnTests(TestCase):
    """A child reaped before C{spawnProcess} returns: the real reactor, then the fake."""

    timeout = 30

    def check(self, events: list[tuple[Any, ...]]) -> None:
        events = merged(events)
        self.assertEqual(events[:3], EXPECTED)
        # The output comes after spawnProcess returned, per descriptor in order.
        output = sorted(e for e in events[3:-1])
        self.assertEqual(output, [("data", 1, b"7\n"), ("data", 2, b"oops\n")])
        self.assertEqual(events[-1:], EXPECTED_AFTER)

    async def test_real_reactor(self) -> None:
        """Twisted's Process: the order lmproxy relies on."""
        protocol = Recorder(wait_for_exit=True)
        transport = reactor.spawnProcess(
            protocol, SETSID, COMMAND, env=dict(os.environ), childFDs=CHILD_FDS
        )
        protocol.events.append(("returned", "pid" if transport.pid is not None else None))
        transport.closeStdin()
        await protocol.ended
        self.check(protocol.events)

    def test_fake_reactor(self) -> None:
        """L{MemoryProcessReactor.exit_during_spawn}: the same order."""
        fake = MemoryProcessReactor()
        fake.exit_during_spawn[COMMAND[-1]] = QuickExit(3, b"7\n", b"oops\n")
        protocol = Recorder(wait_for_exit=False)
        transport = fake.spawnProcess(protocol, SETSID, COMMAND, childFDs=CHILD_FDS)
        protocol.events.append(("returned", "pid" if transport.pid is not None else None))
        self.assertFalse(protocol.ended.called)
        fake.advance(0)
        self.assertTrue(protocol.ended.called)
        self.check(protocol.events)


class BeforeSetsidTests(TestCase):
    """
    A leader that has not made its group yet: signalling the group fails as
    C{killpg} does, and its transport's C{signalProcess} reaches it.  (A
    process spawned without setsid never makes one: the moment, held still.)
    """

    timeout = 30

    async def test_real_reactor(self) -> None:
        protocol = Recorder(wait_for_exit=False)
        transport = reactor.spawnProcess(
            protocol, "/bin/sleep", ["/bin/sleep", "100"], env=dict(os.environ), childFDs=CHILD_FDS
        )
        assert transport.pid is not None
        with self.assertRaises(ProcessLookupError):
            os.killpg(transport.pid, signal.SIGKILL)
        transport.signalProcess(signal.SIGKILL)
        await protocol.ended
        self.assertEqual(protocol.events[-1], ("processEnded", None, None))

    def test_fake_reactor(self) -> None:
        fake = MemoryProcessReactor()
        protocol = Recorder(wait_for_exit=False)
        transport = fake.spawnProcess(protocol, "/bin/sleep", ["/bin/sleep", "100"])
        [process] = fake.processes
        process.in_own_group = False
        assert transport.pid is not None
        with self.assertRaises(ProcessLookupError):
            fake.signal_group(transport.pid, signal.SIGKILL)
        transport.signalProcess(signal.SIGKILL)
        self.assertTrue(protocol.ended.called)
        self.assertEqual(protocol.events[-1], ("processEnded", None, None))


class _Attempt(ClientFactory):
    """Records why a connection attempt failed."""

    protocol = Protocol

    def __init__(self) -> None:
        self.failures: list[type[BaseException]] = []

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.failures.append(type(reason.value))


class StopConnectingTests(TestCase):
    """
    C{stopConnecting} on a pending attempt tells the factory that the
    connection failed, at once, with C{UserError} (a C{ConnectError}); once
    the attempt is over it raises.  A probe that is cancelled relies on this.
    """

    def check(self, connector: IConnector, attempt: _Attempt) -> None:
        connector.stopConnecting()
        self.assertEqual(attempt.failures, [UserError])
        self.assertTrue(issubclass(UserError, ConnectError))
        self.assertRaises(NotConnectingError, connector.stopConnecting)

    def test_real_reactor(self) -> None:
        [port] = free_ports(1)
        attempt = _Attempt()
        self.check(reactor.connectTCP("127.0.0.1", port, attempt), attempt)

    def test_fake_reactor(self) -> None:
        attempt = _Attempt()
        fake = MemoryProcessReactor()
        self.check(fake.connectTCP("127.0.0.1", 9001, attempt), attempt)
        self.assertEqual(fake.pending_probes(), [])
