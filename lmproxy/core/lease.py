"""
A lease: one client's use of one run of a service, handed out by the
service's lifecycle (L{lmproxy.core.lifecycle}) and given back when the
client is done.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from lmproxy.config import ServiceConfig
from lmproxy.interfaces import ILease, ServiceUnavailable


class LeaseGiver(Protocol):
    """What a lease reports to: the lifecycle of its service."""

    @property
    def name(self) -> str:
        """The service's name."""

    @property
    def config(self) -> ServiceConfig:
        """The service's config."""

    def lease_released(self, lease: Lease) -> None:
        """C{lease} was released."""

    def reconnect(self, generation: int) -> Deferred[ILease]:
        """A lease of run C{generation} could not connect: a new lease, or why not."""


@implementer(ILease)
class Lease:
    """A client's use of one run of a service (see L{ILease})."""

    def __init__(
        self,
        giver: LeaseGiver,
        host: str,
        generation: int,
        may_reconnect: bool,
        handover: Handover | None = None,
    ) -> None:
        """
        @param giver: the lifecycle that handed it out.
        @param host: the IP address the run's backend listens on.
        @param generation: which run of the service this is.
        @param may_reconnect: whether the client may still ask for a new
            backend once (see L{ILease.may_reconnect}).
        @param handover: its lifecycle's, for L{take_connection}.
        """
        self._giver = giver
        self._handover = handover
        self.service = giver.name
        self.host = host
        self.port = giver.config.proxy_target_port
        self.generation = generation
        self.may_reconnect = may_reconnect
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._giver.lease_released(self)

    def take_connection(self) -> socket.socket | None:
        """
        A connection to the backend made already, if there is one to use:
        the one that found the run ready, for the first client served as it
        got ready that asks (the caller's to use or close); else C{None},
        and the client connects to L{host} and L{port} itself.
        """
        if self.released or self._handover is None:
            return None
        return self._handover.take()

    def reconnect(self) -> Deferred[ILease]:
        self.release()
        if not self.may_reconnect:
            return fail(ServiceUnavailable(f"cannot connect to service {self.service!r}"))
        return self._giver.reconnect(self.generation)


class Handover:
    """
    The connection that found a run ready (see
    L{lmproxy.core.readiness.connect_now}), offered to the leases handed out
    while the waiters of its start are served, and closed if none of them
    takes it: later, the backend may have given up on a connection that sat
    unused, and the next clients connect themselves.
    """

    def __init__(self) -> None:
        self._connection: socket.socket | None = None

    def serve(self, connection: socket.socket | None, serve: Callable[[], object]) -> None:
        """
        Offer C{connection} (if any) while C{serve} runs, then close it if it
        is still there.
        """
        self._connection = connection
        try:
            serve()
        finally:
            left = self.take()
            if left is not None:
                left.close()

    def take(self) -> socket.socket | None:
        """The connection on offer, once; C{None} if there is none (now)."""
        connection, self._connection = self._connection, None
        return connection
