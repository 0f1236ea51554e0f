"""
A lease: one client's use of one run of a service, handed out by the
service's lifecycle (L{lmproxy.core.lifecycle}) and given back when the
client is done.
"""

from __future__ import annotations

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

    def __init__(self, giver: LeaseGiver, host: str, generation: int, may_reconnect: bool) -> None:
        """
        @param giver: the lifecycle that handed it out.
        @param host: the IP address the run's backend listens on.
        @param generation: which run of the service this is.
        @param may_reconnect: whether the client may still ask for a new
            backend once (see L{ILease.may_reconnect}).
        """
        self._giver = giver
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

    def reconnect(self) -> Deferred[ILease]:
        self.release()
        if not self.may_reconnect:
            return fail(ServiceUnavailable(f"cannot connect to service {self.service!r}"))
        return self._giver.reconnect(self.generation)
