"""
Raise the soft limit on open file descriptors to the hard one, at start.

Every client connection, proxied connection and service log file holds a
descriptor; a soft limit of 1024 (a common default) is reached by a few
hundred idle clients.  The hard limit is what the administrator allows: the
soft one is only a default that a process may raise up to it.  Standard
library only: the C{lmproxy} command calls it on its fast path.
"""

from __future__ import annotations

import resource


def raise_fd_limit() -> tuple[int, int]:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit (when the hard limit is
    unlimited, as far as the kernel allows: C{RLIM_INFINITY} is refused as
    a descriptor limit, so the soft one is left as it is).

    @return: the soft limits before and after (equal when nothing changed,
        including when the change was refused).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, hard
