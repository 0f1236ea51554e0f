"""
C{--watch-config}: reload when the config file changes (L{ConfigWatcher}).

The file is polled (a C{stat} a second costs nothing, needs no library and
sees an editor's rename over the file as a change too).  A change is acted
on once the file has stayed the same for one more poll, so that a file
being written is not read half-way, and only if its text differs from what
was last tried: saving the same text twice reloads nothing, and a config
refused once is not tried again until it changes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from lmproxy.logs import log_observer

POLL_SECONDS = 1.0
"""How often the file is looked at."""

_Stat = tuple[int, int, int] | None  # (inode, size, mtime_ns); None: not there


class ConfigWatcher(Service):
    """Calls C{reload} when the file at C{path} changed and settled."""

    log = Logger(observer=log_observer)

    def __init__(
        self,
        path: str,
        reload: Callable[[], object],
        clock: IReactorTime,
        interval: float = POLL_SECONDS,
    ) -> None:
        """
        @param path: the config file.
        @param reload: called (with nothing) for each change.
        @param clock: runs the polls.
        """
        self._path = path
        self._reload = reload
        self._interval = interval
        self._poll = LoopingCall(self._look)
        self._poll.clock = clock
        self._seen = self._stat()
        self._tried = self._digest()
        self._settling = False

    def startService(self) -> None:
        super().startService()
        self.log.info("Watching {path} for changes", path=self._path)
        self._poll.start(self._interval, now=False).addErrback(self._crashed)

    def stopService(self) -> None:
        super().stopService()
        if self._poll.running:
            self._poll.stop()

    def _stat(self) -> _Stat:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _digest(self) -> bytes | None:
        try:
            with open(self._path, "rb") as f:
                return hashlib.sha256(f.read()).digest()
        except OSError:
            return None

    def _look(self) -> None:
        seen = self._stat()
        if seen != self._seen:  # changed since the last poll: wait for it to settle
            self._seen, self._settling = seen, True
            return
        if not self._settling:
            return
        self._settling = False
        digest = self._digest()
        if digest is None or digest == self._tried:
            return  # gone for now (an editor's rename) or the same text again
        self._tried = digest
        self.log.info("{path} changed: reloading it", path=self._path)
        self._reload()

    def _crashed(self, failure: Failure) -> None:
        self.log.failure("watching {path} failed", failure, path=self._path)
