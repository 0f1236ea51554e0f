"""
Fakes for lmproxy's tests: an in-memory ``IBackends`` that the test drives by
hand.  No production module imports this one.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from attrs import define, evolve, field
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IAddress, IConnector, IProcessTransport, IReactorProcess
from twisted.internet.protocol import ClientFactory, ProcessProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from lmproxy.config import Config
from lmproxy.interfaces import (
    RUNNING,
    STOPPED,
    IBackends,
    ILease,
    IStatusObserver,
    ResourceStatus,
    ServiceBusy,
    ServiceStatus,
    ServiceUnavailable,
    Snapshot,
    UnknownService,
)


@implementer(ILease)
@define(eq=False)
class FakeLease:
    """A lease handed out by L{FakeBackends}; records its release."""

    backends: FakeBackends
    service: str
    host: str
    port: int
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.backends._proxied[self.service] -= 1
            self.backends.changed()

    def reconnect(self) -> Deferred[ILease]:
        self.release()
        self.backends.reconnects.append(self.service)
        config = next(s for s in self.backends.config.services if s.name == self.service)
        if config.restart_on_connection_failure:
            return self.backends.acquire(self.service)
        return fail(ServiceUnavailable(f"could not connect to service {self.service!r}"))


@implementer(IBackends)
@define(eq=False)
class FakeBackends:
    """
    An ``IBackends`` whose services start only when the test says so.

    ``acquire`` of a running service fires at once; otherwise the Deferred
    waits in ``pending[name]`` until the test calls L{finish_start} or
    L{fail_start}.  ``backend_addresses`` maps a service to the (host, port)
    its leases carry.
    """

    config: Config
    started_at: float = 1_700_000_000.0
    states: dict[str, str] = field(factory=dict)
    pending: dict[str, list[Deferred[ILease]]] = field(factory=dict)
    backend_addresses: dict[str, tuple[str, int]] = field(factory=dict)
    observers: list[IStatusObserver] = field(factory=list)
    stop_calls: list[tuple[str, bool]] = field(factory=list)
    reconnects: list[str] = field(factory=list)
    _proxied: dict[str, int] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        for service in self.config.services:
            self.states.setdefault(service.name, STOPPED)
            self.pending.setdefault(service.name, [])
            self._proxied.setdefault(service.name, 0)
            self.backend_addresses.setdefault(
                service.name, ("127.0.0.1", service.proxy_target_port)
            )

    def _check(self, service: str) -> None:
        if service not in self.states:
            raise UnknownService(service)

    def _lease(self, service: str) -> FakeLease:
        host, port = self.backend_addresses[service]
        self._proxied[service] += 1
        self.changed()
        return FakeLease(self, service, host, port)

    def acquire(self, service: str) -> Deferred[ILease]:
        try:
            self._check(service)
        except UnknownService as e:
            return fail(e)
        if self.states[service] == RUNNING:
            return succeed(self._lease(service))
        waiters = self.pending[service]

        def cancel(d: Deferred[ILease]) -> None:
            waiters.remove(d)
            self.changed()

        d: Deferred[ILease] = Deferred(cancel)
        waiters.append(d)
        self.changed()
        return d

    def finish_start(self, service: str) -> None:
        """The start of ``service`` succeeded: serve everyone waiting."""
        self.states[service] = RUNNING
        waiters, self.pending[service] = self.pending[service], []
        for d in waiters:
            d.callback(self._lease(service))
        self.changed()

    def fail_start(self, service: str, message: str = "start failed") -> None:
        """The start of ``service`` failed: fail everyone waiting."""
        self.states[service] = STOPPED
        waiters, self.pending[service] = self.pending[service], []
        for d in waiters:
            d.errback(ServiceUnavailable(message))
        self.changed()

    def start(self, service: str) -> Deferred[None]:
        d = self.acquire(service)

        def done(lease: ILease) -> None:
            lease.release()

        return d.addCallback(done)

    def stop(self, service: str, force: bool) -> Deferred[None]:
        try:
            self._check(service)
        except UnknownService as e:
            return fail(e)
        self.stop_calls.append((service, force))
        if self._proxied[service] and not force:
            return fail(ServiceBusy(service))
        self.states[service] = STOPPED
        self.changed()
        return succeed(None)

    def snapshot(self) -> Snapshot:
        services = tuple(
            ServiceStatus(
                name=s.name,
                listen_port=s.listen_port,
                status=self.states[s.name],
                waiting_connections=len(self.pending[s.name]),
                proxied_connections=self._proxied[s.name],
                last_used=None,
                service_url=s.service_url,
                resource_requirements=dict(s.resource_requirements),
                openai_models=s.openai_api_models,
                pid=None,
                starts=0,
                failed_starts=0,
                evictions=0,
            )
            for s in self.config.services
        )
        resources = []
        for r in self.config.resources:
            usage = {
                s.name: s.resource_requirements[r.name]
                for s in self.config.services
                if r.name in s.resource_requirements and self.states[s.name] == RUNNING
            }
            in_use = sum(usage.values())
            resources.append(
                ResourceStatus(
                    name=r.name,
                    total=r.amount,
                    measured=None,
                    reserved_by_starting_services=0,
                    in_use=in_use,
                    free=None if r.amount is None else r.amount - in_use,
                    usage_by_service=usage,
                )
            )
        return Snapshot(self.started_at, services, tuple(resources))

    def subscribe(self, observer: IStatusObserver) -> Callable[[], None]:
        self.observers.append(observer)
        return lambda: self.observers.remove(observer)

    def changed(self) -> None:
        """Tell every observer the current snapshot."""
        snapshot = self.snapshot()
        for observer in list(self.observers):
            observer.status_changed(snapshot)

    def set_state(self, service: str, state: str) -> None:
        """Put ``service`` in ``state`` and tell the observers."""
        self.states[service] = state
        self.changed()


def status_with(snapshot: Snapshot, name: str, **changes: Any) -> Snapshot:
    """``snapshot`` with the service ``name`` changed (a helper for view tests)."""
    services = tuple(evolve(s, **changes) if s.name == name else s for s in snapshot.services)
    return evolve(snapshot, services=services)


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
        self.group_alive = True  # False once every member of its group is gone
        self.transport = _FakeProcessTransport(pid)
        protocol.makeConnection(self.transport)

    @property
    def command(self) -> list[str]:
        """The command line without the setsid wrapper."""
        return self.args[1:]

    def output(self, data: bytes, fd: int = 1) -> None:
        """The process writes ``data`` to stdout (or ``fd``)."""
        self.protocol.childDataReceived(fd, data)

    def exit(self, code: int | None = 0, signal: int | None = None, group_too: bool = True) -> None:
        """The process exits (and, with ``group_too``, every member of its group)."""
        assert not self.exited, "exited twice"
        self.exited = True
        if group_too:
            self.group_alive = False
        reason = ProcessDone(0) if code == 0 else ProcessTerminated(code, signal)
        self.transport.pid = None
        self.protocol.processExited(Failure(reason))
        self.protocol.processEnded(Failure(reason))


@implementer(IProcessTransport)
class _FakeProcessTransport:
    def __init__(self, pid: int) -> None:
        self.pid: int | None = pid
        self.stdin_closed = False
        self.written: list[bytes] = []

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def loseConnection(self) -> None:
        pass

    def signalProcess(self, signalID: str | int) -> None:
        raise AssertionError("lmproxy signals process groups, never single processes")

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


@implementer(IReactorProcess)
class MemoryProcessReactor(MemoryReactorClock):
    """
    A ``MemoryReactorClock`` that also spawns fake processes and fakes
    ``os.killpg`` (pass L{signal_group} as the supervisor's signaller).

    ``on_signal`` decides what a signal does; by default SIGTERM and SIGKILL
    end the process and its group at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []
        self.signals: list[tuple[int, int]] = []
        self._next_pid = 1000
        self._answered: set[ClientFactory] = set()
        self._connectors: dict[ClientFactory, IConnector] = {}
        self.on_signal: Callable[[FakeProcess, int], None] = _exit_on_fatal_signal

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
        return process.transport

    def signal_group(self, pgid: int, signum: int) -> None:
        """Stands in for ``os.killpg``."""
        process = self._group(pgid)
        if process is None or not process.group_alive:
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
        """Processes that have not exited, optionally only those running ``program``."""
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
        connector: IConnector = super().connectTCP(host, port, factory, timeout, bindAddress)
        self._connectors[factory] = connector
        return connector

    def pending_probes(self) -> list[tuple[str, int, ClientFactory]]:
        """
        Outgoing TCP connections nobody has answered yet and their caller has
        not given up on (``stopConnecting``, e.g. a cancelled connect), oldest first.
        """
        pending = []
        for host, port, factory, _, _ in self.tcpClients:
            connector = self._connectors.get(factory)
            if getattr(connector, "stoppedConnecting", False):
                continue
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
        """Accept the oldest pending outgoing connection to ``port``."""
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
class _FakeConnector:
    def connect(self) -> None:
        pass

    def stopConnecting(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 0)
