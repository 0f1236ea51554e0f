"""
Tests for L{OpenAiApi.reconfigure}: a reloaded config applies from the next
request of a connection that is open already (keep-alive), on both paths.
"""

from __future__ import annotations

import json

from attrs import evolve
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Secret, ServiceConfig
from lmproxy.interfaces import ServiceState
from tests.test_openai import CONFIG, RecordingBackends, Wire

NEW = ServiceConfig(
    name="new", command="srv", proxy_target_port=9004, openai_api=True, openai_api_models=("n1",)
)


class ReconfigureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backends = RecordingBackends()
        self.backends.set_state("chat", ServiceState.RUNNING)
        self.wire = Wire(self.backends)

    def get(self, path: bytes, headers: bytes = b"") -> tuple[bytes, bytes]:
        self.wire.channel.dataReceived(
            b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        )
        status, _, body = self.wire.response()
        return status, body

    def models(self) -> list[str]:
        status, body = self.get(b"/v1/models")
        self.assertIn(b"200", status)
        return [m["id"] for m in json.loads(body)["data"]]

    def chat(self, model: str) -> bytes:
        body = json.dumps({"model": model}).encode()
        self.wire.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        status, _, _ = self.wire.response()
        return status

    def test_routes_follow_on_a_kept_alive_connection(self) -> None:
        """A model added and one removed: the same connection sees both at once."""
        before = self.models()
        self.assertNotIn("n1", before)
        services = (NEW, *[s for s in CONFIG.services if s.name != "embed"])
        self.wire.api.reconfigure(evolve(CONFIG, services=services))
        after = self.models()
        self.assertEqual(after[0], "n1")
        self.assertNotIn("embedder", after)
        self.assertIn(b"404", self.chat("embedder"))  # the hot path follows too
        self.assertIn("new", self.wire.api.stats.services)  # its series from the start

    def test_a_key_given_by_a_reload_applies_to_open_connections(self) -> None:
        """The connection's next request needs the key (and a revoked one stops working)."""
        self.assertIn(b"200", self.get(b"/v1/models")[0])
        self.wire.api.reconfigure(evolve(CONFIG, openai_api_keys=(Secret("sk-new"),)))
        self.assertIn(b"200", self.get(b"/v1/models", b"Authorization: Bearer sk-new\r\n")[0])
        self.wire.api.reconfigure(evolve(CONFIG, openai_api_keys=(Secret("sk-other"),)))
        self.assertIn(b"401", self.get(b"/v1/models", b"Authorization: Bearer sk-new\r\n")[0])

    def test_limits_resized_in_place(self) -> None:
        """A limit that stays is the same object, resized; one that goes lets its queue in."""
        limited = evolve(CONFIG.services[0], max_concurrent_requests=1)
        self.wire.api.reconfigure(evolve(CONFIG, services=(limited, *CONFIG.services[1:])))
        limit = self.wire.api.limits["chat"]
        turn = self.successResultOf(limit.take())
        waiting = limit.take()
        more = evolve(limited, max_concurrent_requests=2)
        self.wire.api.reconfigure(evolve(CONFIG, services=(more, *CONFIG.services[1:])))
        self.assertIs(self.wire.api.limits["chat"], limit)
        self.successResultOf(waiting)
        third = limit.take()
        self.wire.api.reconfigure(CONFIG)
        self.assertNotIn("chat", self.wire.api.limits)
        self.successResultOf(third)
        turn.done()

    def test_body_limit_follows(self) -> None:
        """MaxRequestBodyBytes: a body the new limit refuses gets 413 on either path."""
        body = json.dumps({"model": "llama-3", "pad": "x" * 2000}).encode()  # over 1000
        sized = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        # The hot path takes sized bodies only: a chunked one is twisted.web's.
        chunked = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        for framed, limit, forwarded in [
            (sized, 100, False),
            (chunked, 100, False),
            (sized, 10_000, True),
        ]:
            wire = Wire(self.backends)  # its limit before the reload: 1000
            wire.api.reconfigure(evolve(CONFIG, openai_max_body_bytes=limit))
            wire.channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + framed)
            if forwarded:
                _, backend = wire.backend()
                self.assertTrue(backend.value().endswith(body))
            else:
                self.assertIn(b"413", wire.response()[0])
