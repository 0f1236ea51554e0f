"""
The life of one service, as an explicit state machine::

    stopped --a client--> waiting_for_resources --placed--> starting --ready--> running
       ^                     | last waiter left,              | failed,         | idle, evicted,
       |                     | or stopped                     | or stopped      | stopped, restarted
       |                     v                                v                 v
       +-------------------- stopped <--group gone-- stopping <-----------------+
    running --its process exited on its own--> stopped

L{lmproxy.core.states.TRANSITIONS} lists every move a service can make;
L{ServiceLifecycle._transition} is the one place where its state changes, and
any other move is an L{ImpossibleTransition}: a programming error, never a
state to recover from.  How it follows a reloaded config is in
L{lmproxy.core.lifecyclereload}.

A start that every waiting client has left goes on (a client that retries
finds the model loaded), but the service counts as idle from then on
(L{ServiceLifecycle.idle}): it may be evicted, even mid-start, and its idle
timer runs once it is ready.

A lifecycle owns what belongs to one service: the clients waiting for it
(each with its deadline), its leases, its idle timer, its start attempt, its
process and the cleanups of process groups its process left behind.  It knows
nothing of resources or of other services: its L{LifecycleOwner} (the
supervisor) hears of every transition and decides what may start.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from lmproxy.config import ServiceConfig
from lmproxy.core.backoff import FailedStarts
from lmproxy.core.lease import Handover, Lease
from lmproxy.core.leftovers import Leftovers
from lmproxy.core.lifecyclereload import LifecycleReloads
from lmproxy.core.owner import LifecycleOwner
from lmproxy.core.process import ServiceProcess
from lmproxy.core.startup import Launcher, StartAttempt, StartFailed
from lmproxy.core.states import (
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    TRANSITIONS,
    WAITING,
    ImpossibleTransition,
)
from lmproxy.core.waiters import Waiters
from lmproxy.interfaces import REMOVAL, ILease, ServiceState, ServiceStatus, ServiceUnavailable
from lmproxy.logs import log_observer
from lmproxy.timers import Timer


class ServiceLifecycle(LifecycleReloads):
    """One service's state and everything that belongs to it (see the module docstring)."""

    log = Logger(observer=log_observer)

    def __init__(
        self,
        config: ServiceConfig,
        owner: LifecycleOwner,
        launcher: Launcher,
        max_wait: float,
    ) -> None:
        self.config = config
        self.name = config.name
        self.state = STOPPED
        self.last_used: float | None = None
        self.host: str | None = None  # of the current run
        self.generation = 0  # successful starts: a lease knows which run it used
        self.starts = 0
        self.evictions = 0
        self._failures = FailedStarts(self.name, launcher.reactor)
        self.process: ServiceProcess | None = None
        self._owner = owner
        self.launcher = launcher  # a reload may bring another
        self._clock = launcher.reactor
        self._waiters = Waiters(self.name, self._clock, max_wait, self._waiter_left)
        self._leases: set[Lease] = set()
        self._stop_waiters: list[Deferred[None]] = []
        self._attempt: StartAttempt | None = None
        self._abort_reason: str | None = None  # why the current start is being aborted
        self._idle_timer = Timer(self._clock)
        self._handover = Handover()  # the connection that found a start ready
        # Groups of processes that exited on their own, still being ended.
        self._leftovers = Leftovers(self.name)
        super().__init__()

    @property
    def leases(self) -> int:
        """How many clients are proxied now."""
        return len(self._leases)

    @property
    def idle(self) -> bool:
        """
        Nobody uses it: it runs with no lease, or it starts for nobody (every
        client that waited for it left).  Only an idle service is evicted.
        """
        if self.state is RUNNING:
            return not self._leases
        return self.state is STARTING and not self._waiters

    def status(self) -> ServiceStatus:
        """This service as C{/status} shows it."""
        config = self.config
        return ServiceStatus(
            name=self.name,
            listen_port=config.listen_port,
            status=self.state,
            waiting_connections=len(self._waiters),
            proxied_connections=len(self._leases),
            last_used=self.last_used,
            service_url=config.service_url,
            resource_requirements=dict(config.resource_requirements),
            openai_models=config.openai_api_models,
            pid=None if self.process is None else self.process.pid,
            starts=self.starts,
            failed_starts=self._failures.count,
            evictions=self.evictions,
            last_failure=self._failures.shown(),
            pinned=config.pinned,
            pending_reload=self.pending_reload,
        )

    # -- clients ----------------------------------------------------------

    def acquire(self, reconnected: bool = False) -> Deferred[ILease]:
        """A lease of a running backend, once there is one (see L{IBackends.acquire})."""
        if self._owner.shutting_down:
            return fail(ServiceUnavailable("lmproxy is shutting down"))
        if self.pending_reload is REMOVAL:
            return fail(ServiceUnavailable(f"service {self.name!r} was removed from the config"))
        if self.state is STOPPED or self.state is STOPPING:
            refusal = self._failures.refusal()
            if refusal is not None:  # it backs off after a failed start
                return fail(refusal)
        if self.state is RUNNING and self.pending_reload is None:  # _new_lease touches it
            return succeed(self._new_lease(reconnected))
        # A restart pending: new clients wait for the new run.
        self.touch()
        # An earlier waiter's callback may have stopped it again: ask again.
        return self._wait().addCallback(lambda _: self.acquire(reconnected))

    def reset_backoff(self) -> None:
        """Someone asked for a start: it may start now, back-off or not."""
        if self._failures.reset():
            self._owner.changed(self)

    def touch(self) -> None:
        """A use: refresh last_used, and re-arm the idle timer of a running service."""
        self.last_used = self._clock.seconds()
        if self.state is RUNNING and self.config.idle_timeout is not None:  # None: never
            self._idle_timer.push(self.config.idle_timeout, self._idle_expired)

    def _wait(self) -> Deferred[None]:
        # The wait limit is on waiting for resources, not on a start.
        waiting = self._waiters.add(with_deadline=self.state is not STARTING)
        if self.state is STOPPED:
            self._transition(WAITING)
        self._owner.changed(self)
        return waiting

    def _waiter_left(self) -> None:
        if not self._waiters and self.state is WAITING:
            self._transition(STOPPED)
        self._owner.changed(self)
        if self.idle and self.state is STARTING:
            self.log.info(
                "{service}: every client waiting for it left; it goes on starting, "
                "but may be stopped for another service",
                service=self.name,
            )
            self._owner.idle(self)

    # -- leases and idle time -----------------------------------------------

    def _new_lease(self, reconnected: bool) -> Lease:
        assert self.host is not None
        lease = Lease(self, self.host, self.generation, not reconnected, self._handover)
        self._leases.add(lease)
        self.touch()
        self._owner.changed(self)
        return lease

    def lease_released(self, lease: Lease) -> None:
        """C{lease} was released (by its L{Lease.release})."""
        self._leases.discard(lease)
        self.touch()
        self._owner.changed(self)
        if not self._leases:
            if self.pending_reload is None:
                self._owner.idle(self)
            else:
                self._reload_now()

    def reconnect(self, generation: int) -> Deferred[ILease]:
        """A lease of run C{generation} could not connect: a lease for this client again."""
        # Only a run that still counts as running failed this client.  A run
        # that is over (its process exited on its own, or another client's
        # reconnect restarted it) is no one's failure: like a new client, this
        # one gets the current run, started for it if need be.
        if self.state is RUNNING and self.generation == generation:
            if not self.config.restart_on_connection_failure:
                return fail(
                    ServiceUnavailable(
                        f"cannot connect to service {self.name!r} at "
                        f"{self.config.proxy_target_host}:{self.config.proxy_target_port}"
                    )
                )
            self.stop("restart after a failed connection")
        return self.acquire(reconnected=True)

    def _idle_expired(self) -> None:
        if self.state is not RUNNING or self.config.idle_timeout is None:
            return
        if self._leases:  # busy: look again later, last_used unchanged
            self._idle_timer.push(self.config.idle_timeout, self._idle_expired)
            return
        self.stop(f"idle for {self.config.idle_timeout:g} s")

    # -- starting -----------------------------------------------------------

    def start(self) -> None:
        """The owner placed this service (its resources are reserved): start it."""
        self._transition(STARTING)
        self.starts += 1  # attempts: failed_starts counts the failures among them
        self._waiters.end_deadlines()
        attempt = self._attempt = self.launcher.attempt(self.config)
        self.process = attempt.process
        self._owner.changed(self)
        Deferred.fromCoroutine(self._run_start(attempt)).addErrback(self._start_crashed, attempt)

    def _start_crashed(self, failure: Failure, attempt: StartAttempt) -> Deferred[None] | None:
        # A bug, not a state: log it, and fail the start rather than leave the
        # service starting for ever.
        self.log.failure("{service}: start crashed", failure, service=self.name)
        if self._attempt is not attempt or self.state is not STARTING:
            return None
        crashed = StartFailed("lmproxy failed (see its log)")
        return Deferred.fromCoroutine(self._start_failed(attempt, crashed))

    async def _run_start(self, attempt: StartAttempt) -> None:
        try:
            host = await attempt.run()
        except StartFailed as e:
            if self._abort_reason is None:
                await self._start_failed(attempt, e)
            else:
                await self._start_aborted(self._abort_reason)
            return
        self._started(attempt, host)
        process = attempt.process
        process.when_exited().addCallback(lambda _: self._process_exited(process))

    def _started(self, attempt: StartAttempt, host: str) -> None:
        self._attempt = None
        self.host = host
        self.generation += 1
        self.reset_backoff()
        self._transition(RUNNING)
        seconds = self._clock.seconds() - attempt.began
        self.log.info("{service}: ready after {seconds:.3f} s", service=self.name, seconds=seconds)
        self._owner.start_finished(self, seconds, True)
        self.touch()
        self._handover.serve(attempt.take_connection(), self._waiters.serve)
        self._owner.changed(self)
        if not self._leases:  # its clients left while it started
            self._owner.idle(self)

    async def _start_failed(self, attempt: StartAttempt, failed: StartFailed) -> None:
        self._attempt = None
        reason = str(failed)
        delay = self._failures.failed(reason, failed.retryable, attempt.process.output_tail)
        seconds = self._clock.seconds() - attempt.began
        self.log.error(
            "{service}: start failed: {reason} (next try in {delay:g} s at the earliest)",
            service=self.name,
            reason=reason,
            delay=delay,
        )
        self._owner.start_finished(self, seconds, False)
        self._transition(STOPPING)
        self._waiters.fail(
            self._failures.error(f"service {self.name!r} failed to start: {reason}", delay)
        )
        self._owner.changed(self)
        await self._finish_stop()

    async def _start_aborted(self, reason: str) -> None:
        # Stopped while it started: not a failure of the service.
        self._attempt = None
        self._abort_reason = None
        self.log.info("{service}: start abandoned ({reason})", service=self.name, reason=reason)
        self._transition(STOPPING)
        if not self._restart:  # a restart's waiters wait for the new run
            self._waiters.fail(f"service {self.name!r} was stopped before it was ready: {reason}")
        self._owner.changed(self)
        await self._finish_stop()

    def _process_exited(self, process: ServiceProcess) -> None:
        if self.process is not process or self.state is not RUNNING:
            return  # a stop in progress expects this exit
        if not self.config.consider_stopped_on_process_exit:
            self.log.info(
                "{service}: process {how}; the service stays running "
                "(ConsiderStoppedOnProcessExit is false)",
                service=self.name,
                how=process.exit_description,
            )
            return
        self.log.warn(
            "{service}: process {how} on its own; service stopped",
            service=self.name,
            how=process.exit_description,
        )
        self._become_stopped()
        self._leftovers.end(process)  # its children may live on in its group

    # -- stopping -----------------------------------------------------------

    def stop(self, reason: str) -> Deferred[None]:
        """Stop this service, whatever its state; fires once it is stopped."""
        if self.state is STOPPED:
            return succeed(None)
        if self.state is WAITING:
            self._transition(STOPPED)
            self._waiters.fail(f"service {self.name!r} was not started: {reason}")
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        self._stop_waiters.append(stopped)
        if self.state is STARTING:
            assert self._attempt is not None
            # Set first: the attempt's run ends inside abort().
            self._abort_reason = reason
            self._attempt.abort(reason)
        elif self.state is RUNNING:
            self.log.info("{service}: stopping ({reason})", service=self.name, reason=reason)
            self._idle_timer.cancel()
            self._transition(STOPPING)
            self._owner.changed(self)
            Deferred.fromCoroutine(self._finish_stop())
        return stopped

    def evict(self, reason: str) -> None:
        """Stop this idle service to free its resources for another one."""
        self.evictions += 1
        self.stop(reason)

    def kill(self) -> None:
        """SIGKILL its process group and the groups left behind, now."""
        if self.process is not None:
            self.log.warn("{service}: killing at once", service=self.name)
            self.process.kill()
        self._leftovers.kill()

    def cleanups(self) -> list[Deferred[None]]:
        """The ends of the groups left behind by processes that exited on their own."""
        return self._leftovers.pending()

    async def _finish_stop(self) -> None:
        process = self.process
        if process is not None:
            try:
                await process.stop()
            except Exception:
                self.log.failure("{service}: stopping failed", service=self.name)
        self._become_stopped()

    def _become_stopped(self) -> None:
        self.process = None
        self.host = None
        self._idle_timer.cancel()
        restart = self._settle_reload()
        self._transition(STOPPED)
        if self._waiters:  # clients that came while it stopped
            if self._owner.shutting_down:
                self._waiters.fail("lmproxy is shutting down")
            else:
                self._waiters.renew_deadlines()  # a restart's were ended by its start
                self._transition(WAITING)
        self._owner.changed(self)
        # Last: a stop waiter may acquire it again at once.
        stop_waiters, self._stop_waiters = self._stop_waiters, []
        for d in stop_waiters:
            d.callback(None)
        self._reload_stopped(restart)

    def _transition(self, new: ServiceState) -> None:
        """The one place where the state changes."""
        old = self.state
        if (old, new) not in TRANSITIONS:
            raise ImpossibleTransition(f"service {self.name!r}: {old} -> {new}")
        self.state = new
        self._owner.transitioned(self, old, new)
