"""
How long each service takes to start, learned: the durations of its last
L{KEEP} successful starts, kept across restarts in a small JSON file next to
the logs (L{state_file}), and their median as the estimate of the next start
(C{/status}'s C{start_estimate_seconds}, the dashboard's progress bar).

The file is lmproxy's own: a missing one starts empty, an unreadable or
malformed one is logged once and replaced, and a file that cannot be written
costs the learning across restarts, never a start.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence

from twisted.logger import Logger

from lmproxy.config import ServiceConfig
from lmproxy.logs import log_observer

log = Logger(observer=log_observer)

KEEP = 5
"""Successful starts remembered per service."""

FILE_NAME = "lmproxy-start-times.json"


def state_file(services: Sequence[ServiceConfig]) -> str | None:
    """
    Where the start times are kept: beside the first service's log file
    (C{logs/} by default); C{None} without one (a config made in code).
    """
    if not services or not os.path.isabs(services[0].log_file_path):
        return None
    return os.path.join(os.path.dirname(services[0].log_file_path), FILE_NAME)


class StartTimes:
    """The learned start durations of every service."""

    def __init__(self, path: str | None) -> None:
        """
        @param path: the state file; C{None}: learn for this run only.
        """
        self._path = path
        self._seconds: dict[str, list[float]] = {}
        self._write_failed = False
        if path is not None:
            self._load(path)

    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                document = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warn("start times: {path} cannot be read ({why}); learning anew", path=path, why=e)
            return
        starts = document.get("start_seconds") if isinstance(document, dict) else None
        if not isinstance(starts, dict):
            log.warn("start times: {path} is not lmproxy's; learning anew", path=path)
            return
        for service, seconds in starts.items():
            if isinstance(seconds, list):
                kept = [float(s) for s in seconds if isinstance(s, int | float) and s >= 0]
                self._seconds[str(service)] = kept[-KEEP:]

    def estimate(self, service: str) -> float | None:
        """The median of C{service}'s last successful starts, or C{None} before its first."""
        seconds = self._seconds.get(service)
        return statistics.median(seconds) if seconds else None

    def record(self, service: str, seconds: float) -> None:
        """A start of C{service} succeeded after C{seconds}: learn it, and keep it."""
        kept = self._seconds.setdefault(service, [])
        kept.append(round(seconds, 3))
        del kept[:-KEEP]
        self._save()

    def _save(self) -> None:
        if self._path is None:
            return
        temporary = f"{self._path}.new"
        try:
            os.makedirs(os.path.dirname(self._path), exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "start_seconds": self._seconds}, f)
            os.replace(temporary, self._path)  # a reader never sees half a file
            self._write_failed = False
        except OSError as e:
            if not self._write_failed:  # once, not at every start
                log.warn("start times: {path} cannot be written: {why}", path=self._path, why=e)
            self._write_failed = True
