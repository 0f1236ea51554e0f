"""
Tests for C{POST /reload} on the management API, and C{pending_reload} in
C{/status}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed

from lmproxy.interfaces import REMOVAL, ReloadBusy, ReloadOutcome, ReloadRefused
from lmproxy.manage.api import ManagementApi
from tests.test_management import ALPHA, ApiCase, Client


class ReloadRouteTests(ApiCase):
    def setUp(self) -> None:
        super().setUp()
        self.calls: list[bool] = []
        self.outcome = ReloadOutcome(unchanged=(ALPHA,), restart_pending=("b",))
        self.next: Deferred[ReloadOutcome] | None = None  # else: succeed(self.outcome)
        self.api = ManagementApi(self.backends, self.config, self.clock, reload=self.reload)
        self.client = Client(self, self.api, self.config)

    def reload(self, force: bool) -> Deferred[ReloadOutcome]:
        self.calls.append(force)
        if self.next is None:
            return succeed(self.outcome)
        if self.next.called or len(self.calls) == 1:
            return self.next
        return fail(ReloadBusy("a reload is being applied already"))  # as the Reloader

    def test_reloaded(self) -> None:
        """200 with what happened to each service."""
        body = self.client.json("POST", "/reload")
        self.assertEqual(body["reloaded"], True)
        self.assertEqual(body["unchanged"], [ALPHA])
        self.assertEqual(body["restart_pending"], ["b"])
        self.assertEqual(body["removed"], [])
        self.assertEqual(self.calls, [False])

    def test_force(self) -> None:
        for value, force in [("1", True), ("true", True), ("0", False), ("false", False)]:
            self.client.json("POST", f"/reload?force={value}")
            self.assertEqual(self.calls[-1], force)

    def test_bad_force(self) -> None:
        body = self.client.json("POST", "/reload?force=maybe", 400)
        self.assertIn("force", body["error"])
        self.assertEqual(self.calls, [])

    def test_refused_with_every_problem(self) -> None:
        problems = ['Services[0] ("a").ProxyTargetPort: not a port', "LogLevel: unknown"]
        self.next = fail(ReloadRefused(problems))
        body = self.client.json("POST", "/reload", 400)
        self.assertEqual(body["problems"], problems)
        self.assertIn("running one stays", body["error"])

    def test_one_at_a_time(self) -> None:
        self.next = Deferred()
        first = self.client.send("POST", "/reload")
        body = self.client.json("POST", "/reload", 409)
        self.assertIn("already", body["error"])
        self.next.callback(ReloadOutcome())
        response, _ = self.client.finish(first)
        self.assertEqual(response.code, 200)
        self.next = None
        self.client.json("POST", "/reload")

    def test_get_is_not_allowed(self) -> None:
        self.client.json("GET", "/reload", 405)
        self.assertEqual(self.calls, [])


class NoReloadTests(ApiCase):
    def test_without_a_reloader(self) -> None:
        body = self.client.json("POST", "/reload", 503)
        self.assertIn("cannot reload", body["error"])


class PendingReloadStatusTests(ApiCase):
    def test_pending_reload_in_status(self) -> None:
        self.assertIsNone(self.service(self.client.json("GET", "/status"), ALPHA)["pending_reload"])
        self.backends.pending_reload[ALPHA] = REMOVAL
        self.assertEqual(
            self.service(self.client.json("GET", "/status"), ALPHA)["pending_reload"], "removal"
        )
