"""
Integration test of C{MaxConnections} on a real ``twistd -n lmproxy``, with
real sockets and the demo model server.  No timing assertions: the test
waits on conditions with deadlines.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.harness import Lmproxy, demo_service, free_ports, raw_connect, wait_for

HEALTH = b"GET /health HTTP/1.1\r\nHost: demo\r\n\r\n"


class MaxConnectionsTests(TestCase):
    timeout = 120

    async def test_second_client_served_after_the_first_closes(self) -> None:
        """
        With MaxConnections 1, a second client is accepted and read, but
        reaches the service only once the first client's connection closes;
        then it gets the answer to what it sent while it waited.
        """
        listen, target = free_ports(2)
        lmproxy = Lmproxy(
            self,
            {
                "LogLevel": "Debug",
                "Services": [demo_service("one", listen, target, MaxConnections=1)],
            },
        )
        await lmproxy.start()
        first = await raw_connect(listen)
        first.send(HEALTH)
        await wait_for(lambda: b"200 OK" in first.received, 30, "the first client's answer")
        second = await raw_connect(listen)
        assert second.transport is not None
        accepted = f"one: client 127.0.0.1:{second.transport.getHost().port} connected"
        await wait_for(lambda: accepted in lmproxy.output, 10, "lmproxy to accept the second")
        second.send(HEALTH)
        # One more exchange of the first: lmproxy has read the second's bytes meanwhile.
        first.send(HEALTH)
        await wait_for(
            lambda: first.received.count(b"200 OK") == 2, 10, "the first client's second answer"
        )
        self.assertEqual(bytes(second.received), b"", "the second must wait for its turn")
        first.close()
        await first.closed
        await wait_for(lambda: b"200 OK" in second.received, 10, "the second client's answer")
        second.close()
        await second.closed
        self.assertEqual(await lmproxy.stop(), 0)
