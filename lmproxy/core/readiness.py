"""
Waiting for a freshly spawned service to be ready: its HealthcheckCommand
passes (when it has one), then its target port accepts a connection.

The port is probed with an exponential backoff capped at a few milliseconds,
and at once whenever the service writes output: servers usually say that they
listen, so a client waits for the backend itself, not for a coarse poll.
Before that, a loopback port is tried at every turn of the reactor for a few
milliseconds (L{connect_now}: the reactor cannot sleep less than a
millisecond, and a server that listens at once does so within about one of
its spawn), and the connection that finds it listening is handed to the
caller, for the first client to use rather than open another.

A HealthcheckCommand that fails is run again every HealthcheckIntervalMilliseconds
(after the end of the last run) for as long as the start may take: the overall
StartupTimeoutMilliseconds is enforced by the caller, which cancels the wait;
cancelling kills a running healthcheck along with its children.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from contextlib import suppress

from twisted.internet import abstract
from twisted.internet.defer import CancelledError, Deferred, FailureGroup, race
from twisted.internet.error import ConnectError, NotConnectingError
from twisted.internet.interfaces import IConnector, IReactorCore, IReactorTCP
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from lmproxy.config import ServiceConfig
from lmproxy.core.groups import GroupRegistry, GroupSignaller
from lmproxy.core.shell import Reactor, one_line, run_shell
from lmproxy.logs import log_observer

PROBE_FIRST_DELAY = 0.0005
PROBE_MAX_DELAY = 0.005
PROBE_CONNECT_TIMEOUT = 2.0

log = Logger(observer=log_observer)

SPIN_SECONDS = 0.003
"""
How long a loopback port is probed at every turn of the reactor (see
L{connect_now}) before the probes back off.
"""

SPIN_TURNS = 400
"""At most this many of those tries (about 20 µs a turn when the reactor is idle)."""

ConnectNow = Callable[[str, int], "socket.socket | None"]
"""Connects to C{host}, C{port} without waiting (L{connect_now}, or a fake in tests)."""


def is_loopback(host: str) -> bool:
    """Whether the IP address C{host} is one of this machine's loopback addresses."""
    return host.startswith("127.") or host == "::1"


def connect_now(host: str, port: int) -> socket.socket | None:
    """
    A connection to a loopback address, if its port accepts one now.

    On the loopback interface the kernel answers a non-blocking C{connect}
    within the call: refused (C{SO_ERROR} is set) or connected (the socket
    has its peer), in about 7 µs, so the reactor's thread can ask without
    waiting.  An attempt whose outcome is not known yet counts as refused.

    @param host: a loopback IP address (see L{is_loopback}).
    @return: the connected socket, non-blocking (the caller's to close), or C{None}.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        error = sock.connect_ex((host, port))
        if error == errno.EINPROGRESS:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error == 0:
            sock.getpeername()  # OSError (ENOTCONN) while the handshake goes on
            return sock
    except OSError:
        pass
    sock.close()
    # Before the next try, at the reactor's next turn: let the server that is
    # starting run, if it waits for this CPU (2 cores and a busy neighbour).
    os.sched_yield()
    return None


class ReadinessReactor(Reactor, IReactorTCP, IReactorCore):
    """The reactor features readiness checks need (for type hints only)."""


class Wakeup:
    """A sleep that ends early when L{poke} is called (the service wrote output)."""

    def __init__(self, reactor: ReadinessReactor) -> None:
        self._reactor = reactor
        self._poked: Deferred[None] | None = None

    def poke(self) -> None:
        poked, self._poked = self._poked, None
        if poked is not None:
            poked.callback(None)

    def _next_poke(self) -> Deferred[None]:
        def forget(d: Deferred[None]) -> None:
            if self._poked is d:
                self._poked = None

        self._poked = Deferred(forget)
        return self._poked

    async def sleep(self, seconds: float) -> None:
        try:
            await race([self._next_poke(), deferLater(self._reactor, seconds)])
        except FailureGroup:
            # Cancelling a race fails it with a FailureGroup of its cancelled
            # contenders (neither fails otherwise): we were cancelled.
            raise CancelledError() from None


async def resolve_host(reactor: ReadinessReactor, host: str) -> str:
    """An IP address for C{host}, resolved once per start, not per connection."""
    if abstract.isIPAddress(host) or abstract.isIPv6Address(host):
        return host
    return await reactor.resolve(host)


class _HangUp(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None and isinstance(self.factory, _Probe)
        self.transport.loseConnection()
        self.factory.connected()


class _Probe(ClientFactory):
    """
    One connection attempt that hangs up once connected.  A factory for
    C{connectTCP} rather than an endpoint: C{twisted.internet.endpoints}
    imports TLS (about a third of lmproxy's imports), and nothing on the way
    to the first listener may wait for that.
    """

    protocol = _HangUp
    noisy = False  # one probe every few milliseconds while a service starts

    def __init__(self) -> None:
        self.connector: IConnector | None = None
        self.result: Deferred[None] = Deferred(self._cancel)

    def connected(self) -> None:
        if not self.result.called:
            self.result.callback(None)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if not self.result.called:
            self.result.errback(reason)

    def _cancel(self, result: Deferred[None]) -> None:
        # Fail it first: stopConnecting reports the abandoned attempt as a
        # failed connection (UserError, a ConnectError), which the readiness
        # loop would take for a refusal, and probe again, for ever.
        result.errback(CancelledError())
        if self.connector is not None:
            with suppress(NotConnectingError):
                self.connector.stopConnecting()


async def probe_port(reactor: ReadinessReactor, host: str, port: int, timeout: float) -> None:
    """Connect to C{host:port} and hang up; raises C{ConnectError} when refused."""
    probe = _Probe()
    probe.connector = reactor.connectTCP(host, port, probe, timeout=timeout)
    await probe.result


async def wait_until_ready(
    reactor: ReadinessReactor,
    config: ServiceConfig,
    deadline: float,
    wakeup: Wakeup,
    signal_group: GroupSignaller,
    registry: GroupRegistry | None = None,
    connect: ConnectNow | None = None,
    connected: Callable[[socket.socket], object] | None = None,
) -> str:
    """
    Wait until the service is ready; returns the backend's IP address.
    Runs until cancelled if it never gets ready.

    @param registry: told of each healthcheck's process group.
    @param connect: if given, a loopback port is first probed with it at
        every turn of the reactor for L{SPIN_SECONDS} or L{SPIN_TURNS}
        turns, whichever ends first (the reactor's own
        probes wait a millisecond at least between two tries: a server that
        listens at once would be found up to a millisecond late).
    @param connected: given the connection that C{connect} made, to use or
        close; if C{None} it is closed.
    """
    if config.healthcheck_command:
        await _healthcheck_passes(reactor, config, deadline, signal_group, registry)
    host = await resolve_host(reactor, config.proxy_target_host)
    if connect is not None and is_loopback(host):
        spin_until = reactor.seconds() + SPIN_SECONDS
        for _ in range(SPIN_TURNS):
            sock = connect(host, config.proxy_target_port)
            if sock is not None:
                if connected is None:
                    sock.close()
                else:
                    connected(sock)
                return host
            if reactor.seconds() >= spin_until:
                break
            await deferLater(reactor, 0)  # one turn: whatever else is due runs
    delay = PROBE_FIRST_DELAY
    while True:
        try:
            await probe_port(reactor, host, config.proxy_target_port, PROBE_CONNECT_TIMEOUT)
        except ConnectError:
            await wakeup.sleep(delay)
            delay = min(delay * 2, PROBE_MAX_DELAY)
        else:
            return host


async def _healthcheck_passes(
    reactor: ReadinessReactor,
    config: ServiceConfig,
    deadline: float,
    signal_group: GroupSignaller,
    registry: GroupRegistry | None,
) -> None:
    assert config.healthcheck_command is not None
    while True:
        remaining = max(deadline - reactor.seconds(), 0.001)
        result = await run_shell(
            reactor,
            config.healthcheck_command,
            remaining,
            cwd=config.work_dir,
            signal_group=signal_group,
            registry=registry,
            env=config.env,
        )
        if result.exit_code == 0:
            return
        # Not a failure of the start: a server answers 503 while it loads.
        # The caller's startup timeout ends the retries.
        log.debug(
            "{service}: healthcheck not passing yet ({how}): {output}",
            service=config.name,
            how=result.how,
            output=one_line(result.stderr or result.stdout),
        )
        await deferLater(reactor, config.healthcheck_interval)
