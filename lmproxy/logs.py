"""
lmproxy's log level (the config's C{LogLevel}).  lmproxy's loggers emit
through C{log_observer}, which drops their debug events unless the level is
C{Debug}; everything else reaches Twisted's global log publisher (and so
twistd's log) unchanged.  A hot path checks L{debugging} first, so that a
debug event it would drop costs nothing to build.  L{address_text} and
L{amounts_text} write values as a person reads them, not as Python reprs.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def address_text(address: object) -> str:
    """
    An address as a log line shows it: C{127.0.0.1:42936} or
    C{[::1]:42936} for TCP, else its text (never a repr).
    """
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


def amounts_text(amounts: Mapping[str, int]) -> str:
    """Resource amounts as a log line shows them: C{RAM 200, VRAM 12000}."""
    return ", ".join(f"{name} {amount}" for name, amount in amounts.items()) or "nothing"
