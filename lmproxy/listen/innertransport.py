"""
The transport that a front channel (L{lmproxy.listen.front.FrontChannel})
gives the twisted.web channel behind it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, ITransport
from zope.interface import implementer


@implementer(ITransport, IPushProducer, IConsumer)
class InnerTransport:
    """
    The transport of a front channel's twisted.web channel: the connection's
    own, except that the producer twisted.web registers is kept in
    L{producer}, for the front channel to pause: the connection's one
    producer is the front channel.

    @ivar producer: what twisted.web registered, or C{None}.
    """

    def __init__(self, transport: Any) -> None:
        """
        @param transport: the connection's transport.
        """
        self._transport = transport
        self.producer: IPushProducer | None = None

    @property
    def disconnecting(self) -> bool:
        return bool(self._transport.disconnecting)

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def writeSequence(self, data: Any) -> None:
        self._transport.writeSequence(data)

    def loseConnection(self) -> None:
        self._transport.loseConnection()

    def abortConnection(self) -> None:
        self._transport.abortConnection()

    def getPeer(self) -> IAddress:
        peer: IAddress = self._transport.getPeer()
        return peer

    def getHost(self) -> IAddress:
        host: IAddress = self._transport.getHost()
        return host

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self._transport.stopProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None
