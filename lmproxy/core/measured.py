"""
Measured resources: those whose free amount a C{CheckCommand} reports.

L{Measurements} runs the checks, knows which values can be trusted and puts
every value it gets into the ledger.  A value is I{fresh} from the moment its
check ran until something that changes it happens: a service using the
resource starts or stops (L{Measurements.invalidate}), or its recheck interval
passes while not enough is free.  A check that began before such a change
reports what was true before it, so it does not give a fresh value: the
scheduler asks again and a new check runs.

A CheckCommand's value is the last non-empty line of its stdout, surrounding
whitespace ignored: an integer as upstream reads one (Go's C{strconv.Atoi}: an
optional sign and ASCII digits, within a signed 64-bit integer).  A negative
value is a value: less than nothing is free, so nothing needing it fits.  Its
stderr lines are logged as warnings.  A command that fails, or prints no such
integer, is one warning line, and the resource has no value until a good one
comes: nothing needing it starts, nothing is evicted for it.  The same warnings
from the next runs are logged at debug level, so that a check repeated every
second does not flood the log.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger, LogLevel

from lmproxy.core.groups import GroupRegistry, GroupSignaller
from lmproxy.core.resources import Ledger
from lmproxy.core.shell import Reactor, ShellResult, one_line, run_shell
from lmproxy.logs import log_observer
from lmproxy.timers import Timer

CHECK_COMMAND_TIMEOUT_SECONDS = 60.0
MIN_VALUE = -(2**63)
"""The least value a CheckCommand may report: Go's C{int} on 64-bit systems, as upstream."""
MAX_VALUE = 2**63 - 1
"""The greatest value a CheckCommand may report."""
MAX_STDERR_LINES = 5
"""Stderr lines logged per run; the rest are counted."""
MAX_LINE_CHARS = 200
"""What is logged of each line a CheckCommand printed."""
_INTEGER = re.compile(r"([+-]?)([0-9]+)")

_Warning = tuple[str, tuple[tuple[str, Any], ...]]  # a log format and its fields
_STDERR = "CheckCommand of resource {resource} wrote to stderr: {line}"
_MORE_STDERR = "CheckCommand of resource {resource} wrote {more} more lines to stderr"
_NO_VALUE = (
    "CheckCommand of resource {resource} gave no value: {problem} ({how}); its stdout: {stdout}"
)


def parse_measurement(stdout: str) -> int:
    """
    The value a CheckCommand printed on stdout: its last non-empty line,
    stripped, an integer from L{MIN_VALUE} to L{MAX_VALUE}.

    @raise ValueError: there is no such value; the message says why.
    """
    lines = [line.strip() for line in stdout.splitlines()]
    last = next((line for line in reversed(lines) if line), None)
    if last is None:
        raise ValueError("it printed nothing")
    match = _INTEGER.fullmatch(last)
    if match is None:
        raise ValueError("not an integer")
    sign, digits = match.groups()
    # No int() of a long string: Python refuses over 4300 digits, and no value
    # in range needs more than 19 once leading zeros are gone.
    digits = digits.lstrip("0") or "0"
    value = int(sign + digits) if len(digits) <= 19 else None
    if value is None or not MIN_VALUE <= value <= MAX_VALUE:
        raise ValueError("out of range")
    return value


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
        registry: GroupRegistry | None = None,
    ) -> None:
        self._reactor = reactor
        self._ledger = ledger
        self._signal_group = signal_group
        self._registry = registry  # told of each check's process group
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
        # What the last run of each check warned about: the same again is debug.
        self._warnings: dict[str, list[_Warning]] = {}
        self._failing: set[str] = set()  # gave no value last time

    def check_all(self) -> None:
        """Measure every measured resource once (at start-up, so C{/status} has values)."""
        for resource in self._rechecks:
            if resource not in self._checks:
                self._run_check(resource)

    def reconfigure(self, stale: Iterable[str]) -> None:
        """
        The ledger's resources were reloaded: forget C{stale} (gone, or
        checked by another command; a check of theirs that runs is cancelled),
        and measure the new measured ones.
        """
        for resource in stale:
            self._fresh.discard(resource)
            self._changes[resource] += 1
            self._warnings.pop(resource, None)
            self._failing.discard(resource)
            check = self._checks.pop(resource, None)
            if check is not None:
                check.cancel()
            timer = self._rechecks.pop(resource, None)
            if timer is not None:
                timer.cancel()
        for name, r in self._ledger.resources.items():
            if r.check_command and name not in self._rechecks:
                self._rechecks[name] = Timer(self._reactor)
        if not self._stopped:
            self.check_all()

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
        check.addErrback(
            lambda f: self.log.failure("CheckCommand of resource {resource}", f, resource=resource)
        )

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
                registry=self._registry,
            )
        except CancelledError:
            return
        finally:
            self._checks.pop(resource, None)
        value, warnings = read_result(result)
        self._report(resource, value, warnings)
        self._ledger.measured[resource] = value
        if self._changes[resource] == changes:
            self._fresh.add(resource)
        self._on_change(resource)

    def _report(self, resource: str, value: int | None, warnings: list[_Warning]) -> None:
        """Log a run's warnings: at debug level when the last run had the same ones."""
        level = LogLevel.debug if warnings == self._warnings.get(resource) else LogLevel.warn
        self._warnings[resource] = warnings
        for log_format, fields in warnings:
            self.log.emit(level, log_format, resource=resource, **dict(fields))
        if value is None:
            self._failing.add(resource)
        elif resource in self._failing:
            self._failing.discard(resource)
            self.log.info(
                "CheckCommand of resource {resource} gave a value again: {value}",
                resource=resource,
                value=value,
            )


def read_result(result: ShellResult) -> tuple[int | None, list[_Warning]]:
    """
    The value of one run of a CheckCommand (None: no value), and what to warn
    about: its stderr lines (at most L{MAX_STDERR_LINES}), and why it gave no value.
    """
    warnings: list[_Warning] = []
    stderr = [line for line in result.stderr.splitlines() if line.strip()]
    for line in stderr[:MAX_STDERR_LINES]:
        warnings.append((_STDERR, (("line", one_line(line, MAX_LINE_CHARS)),)))
    if len(stderr) > MAX_STDERR_LINES:
        warnings.append((_MORE_STDERR, (("more", len(stderr) - MAX_STDERR_LINES),)))
    try:
        if result.exit_code != 0:
            raise ValueError("it failed")
        return parse_measurement(result.stdout), warnings
    except ValueError as e:
        stdout = one_line(result.stdout, MAX_LINE_CHARS) or "nothing"
        fields = (("problem", str(e)), ("how", result.how), ("stdout", stdout))
        warnings.append((_NO_VALUE, fields))
        return None, warnings
