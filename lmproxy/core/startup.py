"""
One start attempt of a service: spawn its process, then wait until it is
ready (L{lmproxy.core.readiness}), until the attempt fails (the process cannot
be spawned or exits, the startup timeout passes, the readiness check breaks)
or until it is aborted (the service is stopped while it starts).
"""

from __future__ import annotations

import socket
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, race
from twisted.internet.task import deferLater
from twisted.logger import Logger

from lmproxy.config import ServiceConfig, is_tcp_port
from lmproxy.core.groups import GroupRegistry, GroupSignaller
from lmproxy.core.portcheck import PortCheck
from lmproxy.core.process import ServiceProcess, StartError
from lmproxy.core.readiness import ConnectNow, ReadinessReactor, Wakeup, wait_until_ready
from lmproxy.logs import log_observer

log = Logger(observer=log_observer)


class StartFailed(Exception):
    """
    A start attempt failed; the message says why, fit for clients and the log.

    @ivar retryable: False when the next attempt would fail the same way until
        the config or the machine changes (see L{StartError.retryable}; a
        server that exits while it starts, a target port that is no port).
    """

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@frozen
class Launcher:
    """
    What every start attempt needs besides its service's config.

    @ivar port_check: tells why a target port is taken, before each spawn
        (L{lmproxy.core.portcheck.port_taken}; lmproxy always has one; none
        in tests whose fake server is a port they listen on themselves).
    @ivar connect: probes a loopback target port at every turn of the
        reactor at first (L{lmproxy.core.readiness.connect_now}; lmproxy
        always has one); the connection that finds the service ready is
        kept for its first client (L{StartAttempt.take_connection}).
    """

    reactor: ReadinessReactor
    signal_group: GroupSignaller
    output_service_logs: bool
    registry: GroupRegistry | None = None
    port_check: PortCheck | None = None
    connect: ConnectNow | None = None

    def attempt(self, config: ServiceConfig) -> StartAttempt:
        """A new start attempt of the service C{config}, not begun yet."""
        return StartAttempt(self, config)


class StartAttempt:
    """
    One attempt: its L{process} exists from the beginning (it is what a stop
    stops, even before it is spawned); L{run} spawns it and waits.
    """

    def __init__(self, launcher: Launcher, config: ServiceConfig) -> None:
        self._launcher = launcher
        self._config = config
        self._wakeup = Wakeup(launcher.reactor)
        self._aborted: Deferred[str] = Deferred()
        self._connection: socket.socket | None = None
        self.began = launcher.reactor.seconds()
        self.process = ServiceProcess(
            launcher.reactor,
            config,
            launcher.output_service_logs,
            launcher.signal_group,
            # Output is a hint that the server may listen now: probe at once.
            on_output=self._wakeup.poke,
            registry=launcher.registry,
        )

    def _keep_connection(self, sock: socket.socket) -> None:
        self._connection = sock

    def take_connection(self) -> socket.socket | None:
        """
        Once, after L{run} succeeded: the connection to the backend that
        found it ready, if the probe made one that can be used (see
        L{Launcher.connect}); the caller's to use or close.
        """
        sock, self._connection = self._connection, None
        return sock

    def _launcher_failed(self) -> Deferred[None]:
        """
        Fires if the process exits with a failure (a status other than 0,
        or a signal): a launcher (C{docker run -d}, C{kubectl scale}) exits as
        a matter of course once it has done its job, but one that failed (no
        such image, a bad flag) leaves nothing that could become ready.
        """
        failed: Deferred[None] = Deferred()

        def exited(_: object) -> None:
            if self.process.exit_code != 0 and not failed.called:
                failed.callback(None)

        self.process.when_exited().addCallback(exited)
        return failed

    def abort(self, reason: str) -> None:
        """End the attempt now: L{run} fails with C{reason}."""
        if not self._aborted.called:
            self._aborted.callback(reason)

    async def run(self) -> str:
        """
        Spawn the process and wait until it is ready.

        @return: the IP address of the backend.
        @raise StartFailed: the attempt failed or was aborted.
        """
        reactor, config = self._launcher.reactor, self._config
        if not is_tcp_port(config.proxy_target_port):
            # Loaded, as upstream loads it, with a warning: it can never start.
            raise StartFailed(
                f"ProxyTargetPort {config.proxy_target_port} is not a port number (1-65535)",
                retryable=False,
            )
        # Before the spawn, while nothing of ours can listen there: whoever
        # does is a stray.  Retryable: the stray may go (with back-off).
        check = self._launcher.port_check
        taken = None if check is None else check(config.proxy_target_host, config.proxy_target_port)
        if taken is not None:
            raise StartFailed(taken)
        try:
            self.process.spawn()
        except StartError as e:
            raise StartFailed(str(e), e.retryable) from None
        except Exception:
            # A bug, not a state: the start fails (and its process, if any, is
            # stopped) rather than leave the service starting for ever.
            log.failure("{service}: spawning crashed", service=config.name)
            raise StartFailed("spawning crashed (see lmproxy's log)") from None
        deadline = self.began + config.startup_timeout
        ready = Deferred.fromCoroutine(
            wait_until_ready(
                reactor,
                config,
                deadline,
                self._wakeup,
                self._launcher.signal_group,
                self._launcher.registry,
                connect=self._launcher.connect,
                connected=self._keep_connection,
            )
        )
        # A readiness error must end the race at once, not lose it silently:
        # race() only ends early on a success, so make the error one.
        ready.addErrback(lambda f: f.value)
        contenders: list[Deferred[Any]] = [
            ready,
            self._aborted,
            deferLater(reactor, config.startup_timeout),
        ]
        if config.consider_stopped_on_process_exit:
            contenders.append(self.process.when_exited())
        else:
            contenders.append(self._launcher_failed())
        index, result = await race(contenders)
        if index == 0 and isinstance(result, str):
            return result
        if index == 3:
            await self.process.output_read()  # its last words: the reason a user needs
        raise StartFailed(
            {
                0: f"readiness check failed: {str(result) or type(result).__name__}",
                1: str(result),
                2: f"not ready within {config.startup_timeout:g} s",
                3: f"process {self.process.exit_description} while starting",
            }[index],
            # A server that exits as it starts (a bad flag, no such model
            # file, out of memory) does it again on the next try.
            retryable=index != 3,
        )
