"""
The contract between the listeners (TCP forwarders, OpenAI API, management API)
and the supervisor that owns every model service.

Listeners never start, stop or signal processes: they ask an C{IBackends} for a
running backend and report, through the C{ILease} they get, when they are done
with it.  The supervisor never touches a client socket.

This module imports nothing from lmproxy, so every layer can depend on it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from enum import StrEnum

from attrs import frozen
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface


class ServiceState(StrEnum):
    """
    The states of a service, in the order of its life, as C{/status}, the
    metrics and the dashboard name them.
    """

    STOPPED = "stopped"
    WAITING_FOR_RESOURCES = "waiting_for_resources"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class UnknownService(KeyError):
    """No service has this name (or, for the OpenAI API, this model id)."""


class ServiceUnavailable(Exception):
    """
    A client cannot be given a backend: the start failed, the service backs
    off after a failed start, the wait for resources timed out, the connection
    to a running backend failed, or lmproxy is shutting down.  C{str(exc)} is
    a message fit to show a client.

    @ivar retry_after: seconds after which asking again may succeed (the
        back-off of a failed start; a short wait when the wait for resources
        timed out), or None when nothing is known.
    @ivar retryable: False when asking again cannot help until the config or
        the machine changes (the command does not exist, the server exits as
        it starts): clients should not retry on their own.
    @ivar output_tail: the last lines the server wrote, when it failed to start.
    """

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        retryable: bool = True,
        output_tail: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.retryable = retryable
        self.output_tail = output_tail


class ServiceBusy(Exception):
    """A stop was asked for a service that has proxied connections."""


class ILease(Interface):
    """
    One client's use of a running backend.  While a lease is held, its service
    counts one proxied connection and is never stopped to free resources.
    """

    host = Attribute("Address to connect to (an IP address string).")
    port = Attribute("TCP port to connect to (int).")
    service = Attribute("Name of the service (str).")
    may_reconnect = Attribute(
        "True when L{reconnect} may be tried after a failed connection (bool). A "
        "client reconnects at most once: a lease that L{reconnect} gave says False, "
        "so a backend that accepts readiness probes but not clients cannot make a "
        "client restart it over and over."
    )

    def release() -> None:
        """
        The client is done: stop counting it.  Idempotent.  Refreshes the
        service's last-used time and re-arms its idle timer.
        """

    def take_connection() -> socket.socket | None:
        """
        A connection to C{host:port} made already, if there is one to use:
        the one that found a freshly started backend ready, offered to the
        first client served as it got ready (the caller's to use or close);
        else C{None}, and the client connects itself.
        """

    def reconnect() -> Deferred[ILease]:
        """
        Connecting to C{host:port} failed.  Releases this lease.  If the run
        it belongs to is over already (its process exited, or another client
        restarted it), fire with a lease of the current run, starting one if
        needed.  Otherwise, with RestartOnConnectionFailure, restart the
        service (one restart shared by every client that asks) and fire with a
        new lease; without it, fail with L{ServiceUnavailable}.
        """


class IStatusObserver(Interface):
    """Told about changes of the supervisor's state, for live views and metrics."""

    def status_changed(change: StatusChange) -> None:
        """
        These services and resources changed (their state, connection counts,
        holdings or measurements).  The changes of one reactor turn come as one
        call; an observer that needs the new values asks L{IBackends} for them.
        """

    def start_finished(service: str, seconds: float, succeeded: bool) -> None:
        """A start attempt of C{service} ended after C{seconds}."""

    def service_evicted(service: str) -> None:
        """C{service} was stopped to free resources for another one."""


class IBackends(Interface):
    """What the supervisor offers the listeners."""

    def acquire(service: str) -> Deferred[ILease]:
        """
        Get a running backend of C{service}, starting it (and evicting idle
        services) if needed.  Until the Deferred fires, the caller counts as a
        waiting connection; cancelling the Deferred (the client left) drops it
        at once and never cancels a start that other clients share.

        Fails with L{UnknownService} or L{ServiceUnavailable}.
        """

    def start(service: str) -> Deferred[None]:
        """
        Management action: start C{service} as a client would, firing once it
        is running (or failing with L{ServiceUnavailable}).  Holds no lease.
        """

    def stop(service: str, force: bool) -> Deferred[None]:
        """
        Management action: stop C{service}, firing once it is stopped.  Fails
        with L{ServiceBusy} when it has proxied connections and not C{force}.
        """

    def queued(service: str, delta: int) -> None:
        """
        A client of C{service} began (C{+1}) or ended (C{-1}) waiting for a
        turn (C{MaxConcurrentRequests}, C{MaxConnections}): it asked for no
        backend yet, but C{/status} shows it (C{queued_connections}).
        """

    def snapshot() -> Snapshot:
        """The state of every service and resource at this instant."""

    def service_status(service: str) -> ServiceStatus:
        """The state of one service now; raises L{UnknownService}."""

    def resource_status(resource: str) -> ResourceStatus:
        """The state of one resource now; raises C{KeyError} for an unknown one."""

    def subscribe(observer: IStatusObserver) -> Callable[[], None]:
        """Tell C{observer} about changes; call the result to unsubscribe."""


@frozen
class StartFailure:
    """The last failed start of a service, and its back-off."""

    at: float  # POSIX seconds
    reason: str
    output_tail: tuple[str, ...] = ()  # the last lines the server wrote
    retryable: bool = True  # False: it fails the same way until something changes
    retry_at: float | None = None  # POSIX seconds: the back-off ends; None: over


@frozen
class Shortage:
    """
    One resource that a service waiting for resources lacks, and who holds it.

    @ivar resource: its name.
    @ivar needed: what the service requires of it.
    @ivar available: what a service could take of it now, or None while a
        measured resource has no value.
    @ivar held_by: the other services that hold some of it (starting or running).
    @ivar pinned: those of L{held_by} that are pinned: never stopped to free it.
    @ivar in_use: those of L{held_by} that are in use (a proxied connection, or
        a start that a client waits for): not stopped to free it, for now.
    @ivar stopping: those of L{held_by} being stopped already: room is coming.
    """

    resource: str
    needed: int
    available: int | None
    held_by: tuple[str, ...] = ()
    pinned: tuple[str, ...] = ()
    in_use: tuple[str, ...] = ()
    stopping: tuple[str, ...] = ()


@frozen
class WaitingFor:
    """
    Why a service waits for resources (its state is C{waiting_for_resources}).

    @ivar since: POSIX seconds when it began to wait.
    @ivar shortages: each resource it lacks now; empty when what it needs is
        free but it waits its turn (L{behind}) or for a measurement.
    @ivar behind: services that asked earlier for some of the same resources
        and wait too: they are served first.
    """

    since: float
    shortages: tuple[Shortage, ...] = ()
    behind: tuple[str, ...] = ()


@frozen
class ServiceStatus:
    """One service as /status shows it."""

    name: str
    listen_port: int | None
    status: ServiceState
    waiting_connections: int
    proxied_connections: int
    last_used: float | None  # POSIX seconds
    service_url: str | None
    resource_requirements: Mapping[str, int]
    openai_models: tuple[str, ...]
    pid: int | None
    starts: int
    failed_starts: int
    evictions: int
    last_failure: StartFailure | None = None
    pinned: bool = False
    waiting_for: WaitingFor | None = None  # while it waits for resources
    starting_since: float | None = None  # POSIX seconds, while it starts
    queued_connections: int = 0  # clients waiting for a turn (see IBackends.queued)
    start_estimate: float | None = None  # seconds: the median of its last starts
    # What a reload left to do once it is idle: RESTART (its process settings
    # changed) or REMOVAL (it left the config); None: nothing.
    pending_reload: str | None = None


RESTART = "restart"
"""L{ServiceStatus.pending_reload}: restarted with its new settings once idle."""
REMOVAL = "removal"
"""L{ServiceStatus.pending_reload}: removed from the config, stopped once idle."""


@frozen
class ResourceStatus:
    """
    One resource as /status shows it.  The fields named as upstream's carry
    upstream's meanings; L{available} is lmproxy's own.
    """

    name: str
    total: int | None  # its Amount, None when it has none (measured only)
    measured: int | None  # last CheckCommand value, None when static or not measured yet
    reserved_by_starting_services: int
    in_use: int  # held by starting and running services
    free: int | None  # measured: the last measurement; static: total less in_use
    usage_by_service: Mapping[str, int]
    available: int | None  # what a service could take now: free less reservations


@frozen
class StatusChange:
    """What changed since the last L{IStatusObserver.status_changed}: names."""

    services: frozenset[str]
    resources: frozenset[str]


@frozen
class Snapshot:
    """Everything /status reports, taken at one instant."""

    started_at: float  # POSIX seconds when lmproxy started
    services: tuple[ServiceStatus, ...]
    resources: tuple[ResourceStatus, ...]


@frozen
class ReloadOutcome:
    """
    What a reload did to each service, by name, in config order.

    @ivar unchanged: settings all the same: untouched.
    @ivar updated: changed settings that apply to the running service as it
        is (its idle timeout, its limits, its port...): applied at once.
    @ivar restarted: its process settings changed and it was idle (or the
        reload was forced): restarted now (if it ran) with its new settings.
    @ivar restart_pending: its process settings changed but clients use it:
        restarted once their connections end; new clients wait for that.
    @ivar added: new in the config.
    @ivar removed: gone from the config and stopped (or never running).
    @ivar removal_pending: gone from the config but clients use it: stopped
        once their connections end; it takes no new clients.
    """

    unchanged: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    restart_pending: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    removal_pending: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for the log, e.g. C{1 added, 2 restart when idle, 3 unchanged}."""
        parts = [
            (self.added, "added"),
            (self.removed, "removed"),
            (self.removal_pending, "removed once idle"),
            (self.restarted, "restarted"),
            (self.restart_pending, "restart once idle"),
            (self.updated, "updated in place"),
            (self.unchanged, "unchanged"),
        ]
        shown = [f"{', '.join(names)} {what}" for names, what in parts if names]
        return "; ".join(shown) or "no services"


class ReloadRefused(Exception):
    """
    The new config cannot be used (it does not validate, or a port it asks
    for cannot be opened): nothing changed, the running config stays.

    @ivar problems: every reason, each starting with where it is in the
        config (as L{lmproxy.config.ConfigError}'s).
    """

    def __init__(self, problems: list[str]) -> None:
        """
        @param problems: every reason, each starting with its place.
        """
        super().__init__("\n".join(problems))
        self.problems = problems


class ReloadBusy(Exception):
    """A reload is being applied already: this one is not started."""
