"""
Tests of L{lmproxy.listen.tcp.ServiceProxyFactory.reconfigure}: a reload
gives a service's port its new settings, with clients live and queued.
Memory reactor, C{StringTransport}s and fake backends (as in
L{tests.test_tcp_limits}).
"""

from __future__ import annotations

from attrs import evolve

from lmproxy.listen.limits import RequestLimit
from tests.test_tcp_limits import MAX_WAIT, TcpLimitTests, _config


class ReconfigureTests(TcpLimitTests):
    """The clients of C{TcpLimitTests}, across a reconfigure."""

    def reconfigure(self, max_connections: int | None, **keys: object) -> None:
        service = evolve(_config(max_connections).services[0], **keys)
        self.factory.reconfigure(service, 20, MAX_WAIT * 2)

    def limit(self) -> RequestLimit:
        assert self.factory.limit is not None
        return self.factory.limit

    def test_target_buffer_and_wait(self) -> None:
        self.reconfigure(1, proxy_target_port=18099)
        self.assertEqual((self.factory.port, self.factory.buffer_limit), (18099, 20))
        self.assertEqual(self.factory.max_wait, MAX_WAIT * 2)

    def test_other_service_refused(self) -> None:
        service = evolve(_config(1).services[0], name="other")
        self.assertRaises(ValueError, self.factory.reconfigure, service, 10, MAX_WAIT)
        self.assertEqual(self.factory.service, "llm")

    def test_larger_limit_lets_queued_clients_in(self) -> None:
        first, second, third = self.client(), self.client(), self.client()
        self.assertEqual(self.counts(), (2, 0, 1))
        self.reconfigure(3)
        self.assertTrue(second.connected() and third.connected())
        self.assertEqual(self.counts(), (0, 0, 3))
        for client in (first, second, third):
            client.leave()
        self.assertEqual(self.limit().taken, 0)

    def test_smaller_limit_waits_for_live_ones(self) -> None:
        self.use(2)
        first, second, third = self.client(), self.client(), self.client()
        self.reconfigure(1)
        first.leave()
        self.assertFalse(third.connected())  # still 1 live: at the new limit
        second.leave()
        self.assertTrue(third.connected())
        third.leave()
        self.assertEqual(self.limit().taken, 0)

    def test_no_limit_any_more_releases_the_queue(self) -> None:
        """Every queued client gets its turn; turns go back to the old limit, never below 0."""
        first, second = self.client(), self.client()
        old = self.limit()
        self.reconfigure(None)
        self.assertIsNone(self.factory.limit)
        self.assertTrue(second.connected())
        self.assertEqual(self.counts(), (0, 0, 2))
        self.assertEqual(old.taken, 2)
        fresh = self.client()
        self.assertTrue(fresh.connected())
        for client in (first, second, fresh):
            client.leave()
        self.assertEqual(old.taken, 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])  # deadlines ended

    def test_limit_from_none(self) -> None:
        self.use(None)
        live = self.client()
        self.reconfigure(1)
        first, second = self.client(), self.client()
        self.assertTrue(first.connected())
        self.assertFalse(second.connected())
        live.leave()  # it had no turn: none passes on
        self.assertFalse(second.connected())
        first.leave()
        self.assertTrue(second.connected())
        second.leave()
        self.assertEqual(self.limit().taken, 0)
        self.assertEqual(self.counts(), (0, 0, 0))

    def test_new_max_wait_for_new_waits_only(self) -> None:
        first, second = self.client(), self.client()
        self.reconfigure(1)  # max wait doubled
        third = self.client()
        self.reactor.advance(MAX_WAIT)
        self.assertTrue(second.transport.disconnecting)
        self.assertFalse(third.transport.disconnecting)
        self.reactor.advance(MAX_WAIT)
        self.assertTrue(third.transport.disconnecting)
        for client in (first, second, third):
            client.leave()
        self.assertEqual(self.limit().taken, 0)
