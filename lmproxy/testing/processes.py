"""
A fake process reactor: L{MemoryProcessReactor} spawns L{FakeProcess}es that
the test writes output for and ends by hand, fakes C{os.killpg}, and lets the
test answer or refuse each outgoing TCP connection (readiness probes).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Mapping

from attrs import frozen
from twisted.internet.address import IPv4Address
from twisted.internet.error import (
    ConnectionRefusedError,
    NotConnectingError,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
    UserError,
)
from twisted.internet.interfaces import IAddress, IConnector, IProcessTransport, IReactorProcess
from twisted.internet.protocol import ClientFactory, ProcessProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer


class FakeProcess:
    """A process spawned on a L{MemoryProcessReactor}; the test ends it."""

    def __init__(
        self,
        reactor: MemoryProcessReactor,
        protocol: ProcessProtocol,
        executable: str,
        args: list[str],
        path: str | None,
        pid: int,
        env: Mapping[str, str] | None = None,
        child_fds: Mapping[int, int | str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.executable = executable
        self.args = args
        self.path = path
        self.pid = pid
        self.env = None if env is None else dict(env)
        self.child_fds = None if child_fds is None else dict(child_fds)
        # What each inherited descriptor was at spawn time (the caller may
        # close its copy right after spawnProcess returns, as a real spawn allows).
        self.child_fd_stats: dict[int, os.stat_result] = {
            fd: os.fstat(target)
            for fd, target in (child_fds or {}).items()
            if isinstance(target, int)
        }
        self.exited = False
        self.ended = False  # processEnded was called
        self.pipes_open = any(t in ("r", "w") for t in (child_fds or {}).values())
        self.group_alive = True  # False once every member of its group is gone
        # False until the leader has called setsid (True at once by default):
        # until then its group does not exist, and only the leader can be signalled.
        self.in_own_group = True
        self._reason: Failure | None = None
        self.transport = _FakeProcessTransport(self)
        protocol.makeConnection(self.transport)

    @property
    def command(self) -> list[str]:
        """The command line without the setsid wrapper."""
        return self.args[1:]

    def output(self, data: bytes, fd: int = 1) -> None:
        """The process writes C{data} to stdout (or C{fd}): until its pipes close."""
        assert not self.exited or self.pipes_open, "output after the pipes closed"
        self.protocol.childDataReceived(fd, data)

    def exit(
        self,
        code: int | None = 0,
        signal: int | None = None,
        group_too: bool = True,
        pipes_open: bool = False,
    ) -> None:
        """
        The process exits (and, with C{group_too}, every member of its group).

        Like a real one it is reaped (C{processExited}) before the reactor has
        read the end of its pipes (C{processEnded}): with C{pipes_open}, they
        stay open until L{close_pipes}, and output may still come.
        """
        assert not self.exited, "exited twice"
        self.exited = True
        if group_too:
            self.group_alive = False
        reason = ProcessDone(0) if code == 0 else ProcessTerminated(code, signal)
        self._reason = Failure(reason)
        self.transport.pid = None
        self.protocol.processExited(self._reason)
        if not pipes_open:
            self.close_pipes()

    def close_pipes(self) -> None:
        """The reactor reads the end of the exited process's pipes: C{processEnded}."""
        assert self._reason is not None, "the process has not exited"
        assert not self.ended, "ended twice"
        self.pipes_open = False
        self.ended = True
        self.protocol.processEnded(self._reason)


@implementer(IProcessTransport)
class _FakeProcessTransport:
    def __init__(self, process: FakeProcess) -> None:
        self.process = process
        self.pid: int | None = process.pid
        self.stdin_closed = False
        self.written: list[bytes] = []

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def loseConnection(self) -> None:
        pass

    def signalProcess(self, signalID: str | int) -> None:
        # As Twisted's: the leader alone, and only until it is reaped.
        process = self.process
        assert not process.in_own_group, "lmproxy signals a leader only before its group exists"
        assert isinstance(signalID, int)
        if self.pid is None:
            raise ProcessExitedAlready()
        process.reactor.leader_signals.append((process.pid, signalID))
        if signalID != 0:
            process.reactor.on_signal(process, signalID)

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass

    def writeToChild(self, childFD: int, data: bytes) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        pass

    def getHost(self) -> IAddress:
        return IPv4Address("TCP", "127.0.0.1", 0)

    def getPeer(self) -> IAddress:
        return IPv4Address("TCP", "127.0.0.1", 0)


@frozen
class QuickExit:
    """How a process of L{MemoryProcessReactor.exit_during_spawn} ends."""

    code: int = 0
    stdout: bytes = b""
    stderr: bytes = b""

    def read(self, process: FakeProcess) -> None:
        """The reactor reads what C{process} printed, then the end of its pipes."""
        for fd, data in ((1, self.stdout), (2, self.stderr)):
            if data:
                process.output(data, fd)
        process.close_pipes()


@implementer(IReactorProcess)
class MemoryProcessReactor(MemoryReactorClock):
    """
    A C{MemoryReactorClock} that also spawns fake processes and fakes
    C{os.killpg} (pass L{signal_group} as the supervisor's signaller).

    C{on_signal} decides what a signal does; by default SIGTERM and SIGKILL
    end the process and its group at once.  A process whose C{in_own_group}
    the test sets to False has not called C{setsid} yet: signalling its group
    fails as C{killpg} does, and its transport's C{signalProcess} reaches it.

    C{exit_during_spawn} maps a word of a command line to an exit status, or
    to a L{QuickExit} (a status and what was printed): a process whose command
    has that word exits before C{spawnProcess} returns, as a real one that is
    reaped at once does.  Twisted calls C{connectionMade} with the pid set,
    then C{processExited} from inside C{spawnProcess} (the transport's pid is
    C{None} by the time it returns); what the process printed is read, and
    C{processEnded} called, once the reactor has read its pipes: here at the
    reactor's next turn (C{advance(0)}).  C{tests/test_fake_processes.py}
    checks that order against the real reactor.
    """

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []
        self.signals: list[tuple[int, int]] = []  # (pgid, signal) delivered to groups
        self.leader_signals: list[tuple[int, int]] = []  # (pid, signal) to leaders alone
        self._next_pid = 1000
        self._answered: set[ClientFactory] = set()
        self._connectors: dict[ClientFactory, _ProbeConnector] = {}
        self.on_signal: Callable[[FakeProcess, int], None] = _exit_on_fatal_signal
        self.exit_during_spawn: dict[str, int | QuickExit] = {}

    def spawnProcess(  # type: ignore[override]
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: list[str] = (),  # type: ignore[assignment]
        env: dict[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: dict[int, int | str] | None = None,
    ) -> IProcessTransport:
        self._next_pid += 1
        process = FakeProcess(
            self,
            processProtocol,
            executable,
            list(args),
            path,
            self._next_pid,
            env=env,
            child_fds=childFDs,
        )
        self.processes.append(process)
        for word, how in self.exit_during_spawn.items():
            if word in process.command:
                quick = how if isinstance(how, QuickExit) else QuickExit(how)
                pipes = process.pipes_open
                process.exit(quick.code, pipes_open=pipes)
                if pipes:
                    self.callLater(0, quick.read, process)
                break
        return process.transport

    def signal_group(self, pgid: int, signum: int) -> None:
        """Stands in for C{os.killpg}."""
        process = self._group(pgid)
        if process is None or not process.group_alive or not process.in_own_group:
            raise ProcessLookupError(pgid)
        if signum == 0:
            return
        self.signals.append((pgid, signum))
        self.on_signal(process, signum)

    def _group(self, pgid: int) -> FakeProcess | None:
        for process in self.processes:
            if process.pid == pgid:
                return process
        return None

    def live_processes(self, program: str | None = None) -> list[FakeProcess]:
        """Processes that have not exited, optionally only those running C{program}."""
        return [
            p for p in self.processes if not p.exited and (program is None or program in p.command)
        ]

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float = 30,
        bindAddress: tuple[str, int] | None = None,
    ) -> IConnector:
        # As MemoryReactor records it (typeshed's element type is off).
        self.tcpClients.append((host, port, factory, timeout, bindAddress))  # type: ignore[arg-type]
        connector = _ProbeConnector(self, factory, host, port)
        self._connectors[factory] = connector
        factory.startedConnecting(connector)
        return connector

    def pending_probes(self) -> list[tuple[str, int, ClientFactory]]:
        """
        Outgoing TCP connections nobody has answered yet and their caller has
        not given up on (C{stopConnecting}, e.g. a cancelled connect), oldest first.
        """
        pending = []
        for host, port, factory, _, _ in self.tcpClients:
            if factory not in self._answered:
                pending.append((host, port, factory))
        return pending

    def refuse_connections(self) -> int:
        """Refuse every pending outgoing connection; returns how many."""
        pending = self.pending_probes()
        for _, _, factory in pending:
            self._answered.add(factory)
            factory.clientConnectionFailed(_FakeConnector(), Failure(ConnectionRefusedError()))
        return len(pending)

    def accept_connection(self, port: int) -> StringTransport:
        """Accept the oldest pending outgoing connection to C{port}."""
        for _, p, factory in self.pending_probes():
            if p == port:
                self._answered.add(factory)
                protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
                assert protocol is not None
                transport = StringTransport()
                protocol.makeConnection(transport)
                return transport
        raise AssertionError(f"no pending connection to port {port}")


def _exit_on_fatal_signal(process: FakeProcess, signum: int) -> None:
    if signum in (signal.SIGTERM, signal.SIGKILL) and not process.exited:
        process.exit(None, signum)
    elif signum in (signal.SIGTERM, signal.SIGKILL):
        process.group_alive = False


@implementer(IConnector)
class _ProbeConnector:
    """
    A connection attempt of L{MemoryProcessReactor.connectTCP}.  Like a real
    one, C{stopConnecting} ends a pending attempt by telling the factory that
    the connection failed (with C{UserError}), and raises once it is over.
    """

    def __init__(
        self, reactor: MemoryProcessReactor, factory: ClientFactory, host: str, port: int
    ) -> None:
        self._reactor = reactor
        self._factory = factory
        self._destination = IPv4Address("TCP", host, port)
        self.stoppedConnecting = False

    def stopConnecting(self) -> None:
        if self._factory in self._reactor._answered:
            raise NotConnectingError()
        self.stoppedConnecting = True
        self._reactor._answered.add(self._factory)
        self._factory.clientConnectionFailed(self, Failure(UserError()))

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def getDestination(self) -> IPv4Address:
        return self._destination


@implementer(IConnector)
class _FakeConnector:
    def connect(self) -> None:
        pass

    def stopConnecting(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 0)
