"""
Accepting connections on a listening socket, through the reactor's public
C{IReactorFDSet} and C{IReactorSocket.adoptStreamConnection}, so that running
out of file descriptors costs only the clients that cannot be had yet.

Twisted's own listening port, when C{accept()} fails with C{EMFILE}, accepts
and closes (resets) every client waiting in the kernel's queue, with a log
line for each, and it cannot be changed through a public API
(C{adoptStreamPort} builds its own port).  L{AcceptingPort} instead stops
accepting on that port for L{PAUSE_SECONDS} and tries again: the clients wait
in the kernel's queue (the listen backlog) until descriptors are free, open
connections keep working, the CPU does not spin on a socket that stays
readable, and L{DescriptorShortage} logs the shortage once a second at most,
with the count of failed accepts meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorFDSet,
    IReactorSocket,
    IReactorTime,
    IReadDescriptor,
)
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lmproxy.logs import log_observer

PAUSE_SECONDS = 0.1
"""How long a port stops accepting after the process ran out of descriptors."""

REPORT_SECONDS = 1.0
"""The shortage is logged at most once in this long."""

ACCEPTS_PER_READ = 64
"""Clients accepted at most per readable event (so that one port cannot starve the others)."""

# accept() failed for want of descriptors or memory: retrying at once fails again.
_SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_log = Logger(observer=log_observer)


class DescriptorShortage:
    """
    Reports failed accepts for want of descriptors: the first at once, then
    at most one line every L{REPORT_SECONDS} with the count of failures
    since the last line.  One is shared by every port of the process.
    """

    def __init__(self) -> None:
        self._last_report: float | None = None
        self._unreported = 0

    def failed(self, clock: IReactorTime, error: OSError, port: object) -> None:
        """
        An accept failed for want of descriptors.

        @param clock: tells the time.
        @param error: why it failed.
        @param port: the address it failed on (for the log).
        """
        self._unreported += 1
        now = clock.seconds()
        if self._last_report is not None and now - self._last_report < REPORT_SECONDS:
            return
        _log.warn(
            "Cannot accept new connections ({error}): {count} failed accept(s) since the last "
            "report, the latest on {port}; clients wait in the queue meanwhile",
            error=errno.errorcode.get(error.errno or 0, str(error)),
            count=self._unreported,
            port=port,
        )
        self._last_report = now
        self._unreported = 0


SHORTAGE = DescriptorShortage()
"""The process's one L{DescriptorShortage}."""


class SpareDescriptor:
    """
    One descriptor held in reserve, as Twisted's own port does: a client
    accepted into the last free descriptor still needs a second one for the
    reactor's duplicate, which the spare gives up.  Without it, each retry at
    the limit would accept a client only to close it.
    """

    def __init__(self) -> None:
        self._fd: int | None = None

    def take(self) -> None:
        """Hold a descriptor, unless one is held already or none is free."""
        if self._fd is None:
            # None free: taken again after the next client is handed over.
            with contextlib.suppress(OSError):
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def release(self) -> bool:
        """Give the descriptor up; whether one was held."""
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True


SPARE = SpareDescriptor()
"""The process's one L{SpareDescriptor}."""


@implementer(IListeningPort, IReadDescriptor)
class AcceptingPort:
    """
    Listens on a socket that is already listening, building a protocol from
    C{factory} for each client (see the module).

    @ivar factory: builds a protocol for each connection.
    """

    def __init__(
        self,
        reactor: Any,  # IReactorFDSet, IReactorSocket and IReactorTime
        listening: socket.socket,
        factory: IProtocolFactory,
        shortage: DescriptorShortage = SHORTAGE,
        spare: SpareDescriptor | None = None,
        banner: str | None = None,
    ) -> None:
        """
        @param reactor: watches the socket, adopts the clients, times the pauses.
        @param listening: a bound, listening, non-blocking TCP socket; the
            port owns it from now on.
        @param factory: builds a protocol for each connection.
        @param banner: what the port serves, for the log line when it starts
            (C{"OpenAI API on http://localhost:7070/v1"}); default: the
            factory's name and the port.
        @param shortage: where a shortage of descriptors is reported.
        @param spare: the spare descriptor (default: the process's one).
        """
        self._reactor = reactor
        self._fdset: IReactorFDSet = reactor
        self._adopter: IReactorSocket = reactor
        self._socket = listening
        self.factory = factory
        self._shortage = shortage
        self._spare = SPARE if spare is None else spare
        self._paused: IDelayedCall | None = None
        self._listening = False
        self._banner = banner

    # --- IListeningPort ---------------------------------------------------------

    def startListening(self) -> None:
        """Start the factory and accept clients."""
        self.factory.doStart()
        self._listening = True
        self._spare.take()
        self._fdset.addReader(self)
        if self._banner is None:
            _log.info(
                "{factory} starting on {port}", factory=self._name(), port=self._port_number()
            )
        else:
            _log.info("{banner}", banner=self._banner)

    def stopListening(self) -> Deferred[None]:
        """Stop accepting, close the socket and stop the factory."""
        if self._listening:
            self._listening = False
            self._fdset.removeReader(self)
            if self._paused is not None and self._paused.active():
                self._paused.cancel()
            self._paused = None
            port = self._port_number()
            self._socket.close()
            self.factory.doStop()
            _log.info("({factory} on {port} closed)", factory=self._name(), port=port)
        return succeed(None)

    def serve(self, factory: IProtocolFactory, banner: str | None = None) -> None:
        """
        Build the protocols of the next clients accepted with C{factory} (a
        reload): the socket and the clients accepted already are not touched.
        While listening, a different factory is started before the old one is
        stopped, and a different banner is logged.

        @param factory: builds a protocol for each connection from now on.
        @param banner: what the port serves now (see the constructor).
        """
        old, self.factory = self.factory, factory
        if self._listening and factory is not old:
            factory.doStart()
            old.doStop()
        if banner != self._banner:
            self._banner = banner
            if self._listening and banner is not None:
                _log.info("{banner}", banner=banner)

    def getHost(self) -> IPv4Address | IPv6Address:
        """The address the socket listens on."""
        host, port = self._socket.getsockname()[:2]
        if self._socket.family == socket.AF_INET6:
            return IPv6Address("TCP", host, port)
        return IPv4Address("TCP", host, port)

    # --- IReadDescriptor ------------------------------------------------------

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self._socket.fileno()

    def logPrefix(self) -> str:
        """What the reactor's log lines about this port start with."""
        return self._name()

    def doRead(self) -> None:
        """Accept the clients waiting (up to L{ACCEPTS_PER_READ}); pause on a shortage."""
        for _ in range(ACCEPTS_PER_READ):
            if not self._listening or self._paused is not None:
                return
            try:
                client, _address = self._socket.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _SHORTAGE:
                    self._pause(e)
                    return
                # The client left before it was accepted (ECONNABORTED), or a
                # firewall refused it (EPERM): the next one may do better.
                continue
            with client:
                self._adopt(client)
            # Our copy is closed: its descriptor can be the spare again.
            self._spare.take()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the socket (it failed): stop listening."""
        _log.failure("{factory} stops accepting", reason, factory=self._name())
        self.stopListening()

    # --- Helpers --------------------------------------------------------------

    def _adopt(self, client: socket.socket) -> None:
        """
        Hand a client to the reactor, which takes a duplicate of its
        descriptor: when the client took the last free one, into the spare's.
        """
        client.setblocking(False)
        try:
            try:
                self._hand_over(client)
            except OSError as e:
                if e.errno not in _SHORTAGE or not self._spare.release():
                    raise
                self._hand_over(client)
        except OSError as e:
            if e.errno in _SHORTAGE:
                # Not even the spare: this client is lost (closed), the next
                # ones wait in the queue.
                self._pause(e)
            else:  # it left already (getpeername: ENOTCONN)
                _log.debug(
                    "{factory}: a client left at once: {error}", factory=self._name(), error=e
                )
        except Exception:
            # A bug in building its protocol: that client only.
            _log.failure("{factory}: cannot serve a new client", factory=self._name())

    def _hand_over(self, client: socket.socket) -> None:
        family = socket.AddressFamily(client.family)
        # Twisted annotates a ServerFactory; it takes any IProtocolFactory.
        factory = cast(ServerFactory, self.factory)
        self._adopter.adoptStreamConnection(client.fileno(), family, factory)

    def _pause(self, error: OSError) -> None:
        self._shortage.failed(self._reactor, error, self._port_number())
        self._fdset.removeReader(self)
        self._paused = self._reactor.callLater(PAUSE_SECONDS, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self._listening:
            self._fdset.addReader(self)

    def _port_number(self) -> int:
        port: int = self._socket.getsockname()[1]
        return port

    def _name(self) -> str:
        return type(self.factory).__name__
