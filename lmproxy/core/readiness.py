"""
Waiting for a freshly spawned service to be ready: its HealthcheckCommand
passes (when it has one), then its target port accepts a connection.

The port is probed with an exponential backoff capped at a few milliseconds,
and at once whenever the service writes output: servers usually say that they
listen, so a client waits for the backend itself, not for a coarse poll.

A HealthcheckCommand that fails is run again every HealthcheckIntervalMilliseconds
(after the end of the last run) for as long as the start may take: the overall
StartupTimeoutMilliseconds is enforced by the caller, which cancels the wait;
cancelling kills a running healthcheck along with its children.
"""

from __future__ import annotations

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
) -> str:
    """
    Wait until the service is ready; returns the backend's IP address.
    Runs until cancelled if it never gets ready.

    @param registry: told of each healthcheck's process group.
    """
    if config.healthcheck_command:
        await _healthcheck_passes(reactor, config, deadline, signal_group, registry)
    host = await resolve_host(reactor, config.proxy_target_host)
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
