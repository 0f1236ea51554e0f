"""
lmproxy's log level (the config's C{LogLevel}).  lmproxy's loggers emit
through C{log_observer}, which drops their debug events unless the level is
C{Debug}; everything else reaches Twisted's global log publisher (and so
twistd's log) unchanged.  A hot path checks L{debugging} first, so that a
debug event it would drop costs nothing to build.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)

log_observer = FilteringLogObserver(globalLogPublisher, [_predicate])
"""Pass as C{Logger(observer=log_observer)} in lmproxy's modules."""


_debugging = False


def set_log_level(level: str) -> None:
    """C{"Debug"} shows lmproxy's debug events; anything else hides them."""
    global _debugging
    _debugging = level == "Debug"
    _predicate.setLogLevelForNamespace("", LogLevel.debug if _debugging else LogLevel.info)


def debugging() -> bool:
    """Does the level show lmproxy's debug events?"""
    return _debugging
