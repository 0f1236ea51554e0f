"""
Measured resources: those whose free amount a C{CheckCommand} reports.

L{Measurements} runs the checks, knows which values can be trusted and puts
every value it gets into the ledger.  A value is I{fresh} from the moment its
check ran until something that changes it happens: a service using the
resource starts or stops (L{Measurements.invalidate}), or its recheck interval
passes while not enough is free.  A check that began before such a change
reports what was true before it, so it does not give a fresh value: the
scheduler asks again and a new check runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from lmproxy.core.groups import GroupSignaller
from lmproxy.core.resources import Ledger
from lmproxy.core.shell import Reactor, run_shell
from lmproxy.logs import log_observer
from lmproxy.timers import Timer

CHECK_COMMAND_TIMEOUT_SECONDS = 60.0


class Measurements:
    """
    The CheckCommands of one ledger's measured resources.

    @param on_change: called with a resource's name when it got a new value or
        its value went stale: the scheduler should look again.
    """

    log = Logger(observer=log_observer)

    def __init__(
        self,
        reactor: Reactor,
        ledger: Ledger,
        signal_group: GroupSignaller,
        on_change: Callable[[str], None],
    ) -> None:
        self._reactor = reactor
        self._ledger = ledger
        self._signal_group = signal_group
        self._on_change = on_change
        self._fresh: set[str] = set()
        # Bumped by every change of a resource: a check that saw another count
        # when it began measured something that is no longer true.
        self._changes: Counter[str] = Counter()
        self._checks: dict[str, Deferred[None]] = {}
        self._rechecks = {
            name: Timer(reactor) for name, r in ledger.resources.items() if r.check_command
        }
        self._stopped = False

    def check_all(self) -> None:
        """Measure every measured resource once (at start-up, so C{/status} has values)."""
        for resource in self._rechecks:
            if resource not in self._checks:
                self._run_check(resource)

    def fresh(self, resources: Iterable[str]) -> bool:
        """True when every one of C{resources} has a fresh value; else measure them."""
        fresh = True
        for resource in resources:
            if resource not in self._fresh:
                fresh = False
                if resource not in self._checks:
                    self._run_check(resource)
        return fresh

    def shortfall(self, requirements: Mapping[str, int]) -> dict[str, int] | None:
        """
        What is missing of the measured resources C{requirements} name, or
        None while that is not known: a check runs (or will run again after its
        interval, when the last one gave no value).  A CheckCommand that gave
        no value must never make lmproxy evict a service for nothing.
        """
        measured = [r for r in requirements if r in self._rechecks]
        if not measured:
            return {}
        if not self.fresh(measured):
            return None
        missing = self._ledger.shortfall(requirements, measured)
        unknown = [r for r in missing if self._ledger.measured.get(r) is None]
        if unknown:
            self.recheck_later(unknown)
            return None
        return missing

    def invalidate(self, resources: Iterable[str]) -> None:
        """Something that changes C{resources} happened: their values are stale."""
        for resource in resources:
            if resource in self._rechecks:
                self._fresh.discard(resource)
                self._changes[resource] += 1

    def recheck_later(self, resources: Iterable[str]) -> None:
        """Not enough is free: let C{resources} go stale after their check interval."""
        for resource in resources:
            timer = self._rechecks[resource]
            if not (timer.pending or self._stopped):
                interval = self._ledger.resources[resource].check_interval
                timer.arm(interval, self._recheck, resource)

    def stop(self) -> None:
        """lmproxy is shutting down: no more checks, and the running ones are killed."""
        self._stopped = True
        for timer in self._rechecks.values():
            timer.cancel()
        for check in list(self._checks.values()):
            check.cancel()

    def _recheck(self, resource: str) -> None:
        self._fresh.discard(resource)
        self._on_change(resource)

    def _run_check(self, resource: str) -> None:
        check = Deferred.fromCoroutine(self._check(resource))
        if not check.called:
            self._checks[resource] = check

    async def _check(self, resource: str) -> None:
        command = self._ledger.resources[resource].check_command
        assert command is not None
        changes = self._changes[resource]
        try:
            result = await run_shell(
                self._reactor,
                command,
                CHECK_COMMAND_TIMEOUT_SECONDS,
                signal_group=self._signal_group,
            )
        except CancelledError:
            return
        finally:
            self._checks.pop(resource, None)
        value = _parse_measurement(result.output) if result.exit_code == 0 else None
        if value is None:
            self.log.warn(
                "CheckCommand of resource {resource} did not print an integer "
                "(status {status}): {output}",
                resource=resource,
                status=result.exit_code,
                output=result.output.strip()[:200],
            )
        self._ledger.measured[resource] = value
        if self._changes[resource] == changes:
            self._fresh.add(resource)
        self._on_change(resource)


def _parse_measurement(output: str) -> int | None:
    try:
        return int(output.strip())
    except ValueError:
        return None
