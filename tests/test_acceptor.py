"""
Tests of L{lmproxy.listen.acceptor}: accepting clients, and running out of
file descriptors without resetting clients, spinning or flooding the log.
A fake listening socket on a memory reactor: no sockets, no time.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.listen.acceptor import (
    ACCEPTS_PER_READ,
    PAUSE_SECONDS,
    REPORT_SECONDS,
    AcceptingPort,
    DescriptorShortage,
)


class FakeClient:
    """An accepted socket: records that it was made non-blocking and closed."""

    family = socket.AF_INET

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.blocking = True
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True


class FakeListener:
    """A listening socket whose C{accept} results the test queues (clients or errors)."""

    family = socket.AF_INET

    def __init__(self) -> None:
        self.queue: list[FakeClient | OSError] = []
        self.accepts = 0
        self.closed = False

    def accept(self) -> tuple[FakeClient, tuple[str, int]]:
        self.accepts += 1
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "empty")
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise item
        return item, ("127.0.0.1", 40000)

    def fileno(self) -> int:
        return 3

    def getsockname(self) -> tuple[str, int]:
        return ("0.0.0.0", 8081)

    def close(self) -> None:
        self.closed = True


def emfile() -> OSError:
    return OSError(errno.EMFILE, "Too many open files")


class AcceptingPortTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.listener = FakeListener()
        self.factory = Factory.forProtocol(Protocol)
        self.shortage = DescriptorShortage()
        listener: Any = self.listener
        self.port = AcceptingPort(self.reactor, listener, self.factory, self.shortage)
        self.port.startListening()

    def reading(self) -> bool:
        return self.port in self.reactor.getReaders()

    def test_clients_adopted_and_closed(self) -> None:
        """Each client goes to the reactor (which duplicates it); our copy is closed."""
        clients = [FakeClient(10), FakeClient(11)]
        self.listener.queue.extend(clients)
        self.port.doRead()
        adopted = self.reactor.adoptedStreamConnections
        self.assertEqual([(fd, family) for fd, family, _ in adopted], [(10, 2), (11, 2)])
        self.assertTrue(all(factory is self.factory for _, _, factory in adopted))
        self.assertTrue(all(c.closed and not c.blocking for c in clients))
        self.assertTrue(self.reading())

    def test_bounded_accepts_per_read(self) -> None:
        self.listener.queue.extend(FakeClient(i) for i in range(ACCEPTS_PER_READ + 5))
        self.port.doRead()
        self.assertEqual(len(self.reactor.adoptedStreamConnections), ACCEPTS_PER_READ)

    def test_aborted_client_skipped(self) -> None:
        self.listener.queue.extend([OSError(errno.ECONNABORTED, "aborted"), FakeClient(12)])
        self.port.doRead()
        self.assertEqual(len(self.reactor.adoptedStreamConnections), 1)

    def test_shortage_pauses_the_port(self) -> None:
        """EMFILE: no accept until PAUSE_SECONDS have passed, then reading again."""
        self.listener.queue.extend([emfile(), FakeClient(13)])
        with capturedLogs():
            self.port.doRead()
        self.assertFalse(self.reading())
        self.assertEqual(self.listener.accepts, 1)
        self.reactor.advance(PAUSE_SECONDS)
        self.assertTrue(self.reading())
        self.port.doRead()
        self.assertEqual([fd for fd, _, _ in self.reactor.adoptedStreamConnections], [13])

    def test_shortage_logged_once_a_second_with_a_count(self) -> None:
        with capturedLogs() as events:
            for _ in range(int(REPORT_SECONDS / PAUSE_SECONDS) * 3):
                self.listener.queue.append(emfile())
                self.port.doRead()
                self.reactor.advance(PAUSE_SECONDS)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn(len(warnings), (3, 4))
        self.assertEqual(warnings[0]["count"], 1)
        # Every failure is counted in the line that follows it (the last ones await theirs).
        failures = int(REPORT_SECONDS / PAUSE_SECONDS) * 3
        reported = sum(w["count"] for w in warnings)
        self.assertTrue(failures - REPORT_SECONDS / PAUSE_SECONDS <= reported <= failures)
        self.assertEqual(warnings[0]["error"], "EMFILE")

    def test_shortage_when_adopting(self) -> None:
        """No descriptor to duplicate the client into: that one is closed, the port pauses."""
        client = FakeClient(14)
        self.listener.queue.extend([client, FakeClient(15)])

        def adopt(fd: int, family: object, factory: object) -> None:
            raise emfile()

        self.patch(self.reactor, "adoptStreamConnection", adopt)
        with capturedLogs():
            self.port.doRead()
        self.assertTrue(client.closed)
        self.assertFalse(self.reading())
        self.assertEqual(len(self.listener.queue), 1)

    def test_stop_listening(self) -> None:
        self.listener.queue.append(emfile())
        with capturedLogs():
            self.port.doRead()
        self.successResultOf(self.port.stopListening())
        self.assertTrue(self.listener.closed)
        self.assertFalse(self.reading())
        self.reactor.advance(PAUSE_SECONDS)  # the pause ends: still not reading
        self.assertFalse(self.reading())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
