"""
The states of a service's lifecycle and every move between them
(L{TRANSITIONS}); L{lmproxy.core.lifecycle} draws them and makes the moves.
"""

from __future__ import annotations

from lmproxy.interfaces import ServiceState

STOPPED = ServiceState.STOPPED
WAITING = ServiceState.WAITING_FOR_RESOURCES
STARTING = ServiceState.STARTING
RUNNING = ServiceState.RUNNING
STOPPING = ServiceState.STOPPING

TRANSITIONS: frozenset[tuple[ServiceState, ServiceState]] = frozenset(
    {
        (STOPPED, WAITING),  # a client arrived
        (WAITING, STOPPED),  # its last waiting client left, or it was stopped
        (WAITING, STARTING),  # the owner placed it: its resources are reserved
        (STARTING, RUNNING),  # ready
        (STARTING, STOPPING),  # the start failed, or it was stopped meanwhile
        (RUNNING, STOPPING),  # idle, evicted, stopped on request, restarted
        (RUNNING, STOPPED),  # its process exited on its own
        (STOPPING, STOPPED),  # its process group is gone
    }
)


class ImpossibleTransition(AssertionError):
    """A move that L{TRANSITIONS} does not list: a bug in lmproxy."""
