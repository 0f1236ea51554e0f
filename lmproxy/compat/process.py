"""
What lmproxy assumes of Twisted's process support beyond its public API (see
L{lmproxy.compat}).

lmproxy is a child subreaper (L{lmproxy.core.subreaper}): it must reap the
orphans re-parented to it, and never a child that Twisted spawned, whose exit
status Twisted reads.  Twisted has no public way to tell which children are
its own.  The assumption, tested: a child spawned with C{spawnProcess} is a key
of C{twisted.internet.process.reapProcessHandlers} from the spawn until
Twisted has reaped it.

This module imports only Twisted's process support.
"""

from __future__ import annotations

from collections.abc import Container

from twisted.internet import process as twisted_process


def twisted_children() -> Container[int]:
    """The pids of the children that Twisted's process support will reap."""
    return twisted_process.reapProcessHandlers
