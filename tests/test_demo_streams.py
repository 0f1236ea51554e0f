"""
Tests for L{lmproxy.demo.streams.BodyProducer}: a bulk body written with flow
control, against a request that pauses it after every write.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from lmproxy.demo.streams import CHUNK_SIZE, BodyProducer, read_pattern


class PausingRequest:
    """
    The part of a request that L{BodyProducer} uses; its buffer is "full" after
    every write, so it pauses the producer each time.
    """

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.finished = 0
        self.finish_waiter: Deferred[None] = Deferred()

    def notifyFinish(self) -> Deferred[None]:
        return self.finish_waiter

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.producer.pauseProducing()

    def finish(self) -> None:
        self.finished += 1


class BodyProducerTests(SynchronousTestCase):
    """
    L{BodyProducer} writes one chunk per resume while the connection is full.
    """

    def start(self, read: Any, length: int) -> PausingRequest:
        request = PausingRequest()
        BodyProducer(cast(Request, request), read, length).start()
        return request

    def test_one_chunk_per_resume(self) -> None:
        """
        Paused after each write, it writes the next chunk only when resumed,
        and finishes (once) after the last.
        """
        length = 2 * CHUNK_SIZE + 10
        request = self.start(read_pattern, length)
        self.assertEqual([len(c) for c in request.written], [CHUNK_SIZE])
        producer = request.producer
        producer.resumeProducing()
        self.assertEqual(len(request.written), 2)
        self.assertEqual(request.finished, 0)
        producer.resumeProducing()
        self.assertEqual([len(c) for c in request.written], [CHUNK_SIZE, CHUNK_SIZE, 10])
        self.assertEqual((request.finished, request.producer), (1, None))
        producer.resumeProducing()  # a late resume writes nothing more
        self.assertEqual((len(request.written), request.finished), (3, 1))

    def test_stop(self) -> None:
        """
        Stopped (the connection is gone), it writes nothing more and does not finish.
        """
        request = self.start(read_pattern, 3 * CHUNK_SIZE)
        producer = request.producer
        producer.stopProducing()
        producer.resumeProducing()
        self.assertEqual((len(request.written), request.finished), (1, 0))

    def test_client_gone(self) -> None:
        """
        A request that ends with an error (the client left) stops it too.
        """
        request = self.start(read_pattern, 3 * CHUNK_SIZE)
        producer = request.producer
        request.finish_waiter.errback(Failure(ConnectionDone()))
        producer.resumeProducing()
        self.assertEqual((len(request.written), request.finished), (1, 0))

    def test_source_ends_early(self) -> None:
        """
        When the source has less than C{length}, what there is is sent and
        the request finished.
        """
        data = [b"abc"]
        request = self.start(lambda size: data.pop() if data else b"", 100)
        request.producer.resumeProducing()
        self.assertEqual((request.written, request.finished), ([b"abc"], 1))

    def test_empty(self) -> None:
        """
        A body of length 0 is finished at once, without a write.
        """
        request = self.start(read_pattern, 0)
        self.assertEqual((request.written, request.finished), ([], 1))
