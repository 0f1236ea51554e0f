"""
CORS in a real headless Chromium (as the dashboard's browser tests run it):
a page served on another port calls a real ``twistd -n lmproxy`` with
``fetch``, with an API key (so every call is preflighted), and a demo model
server behind it.  A page on an origin that is not allowed gets a failed
``fetch``, and starts nothing.

The pages are served by this test's reactor (a twisted.web C{Data}
resource); selenium blocks, so every browser step runs in a thread.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.harness import Lmproxy, demo_service, free_ports
from tests.test_dashboard_browser import BrowserTestCase, require_browser

KEY = "sk-browser-key"
MODEL = "demo"
PAGE = b"<!doctype html><title>a web UI</title><p>a page that calls lmproxy</p>"

# Run by selenium's execute_async_script: the last argument is its callback.
CHAT = """
const [api, key, stream, done] = arguments;
const headers = {"Content-Type": "application/json"};
if (key) headers["Authorization"] = "Bearer " + key;
const body = JSON.stringify(
  {model: "demo", stream, messages: [{role: "user", content: "hello from a page"}]});
(async () => {
  const response = await fetch(api + "/v1/chat/completions", {method: "POST", headers, body});
  const seen = {status: response.status, type: response.headers.get("content-type")};
  if (!stream) return {...seen, document: await response.json()};
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const pieces = [];
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    pieces.push(decoder.decode(value, {stream: true}));
  }
  return {...seen, pieces};
})().then(done, (error) => done({error: error.name + ": " + error.message}));
"""


class CorsBrowserTests(BrowserTestCase):
    """A page of an allowed origin uses the port; another page's fetch fails."""

    timeout = 90

    def setUp(self) -> None:
        require_browser()
        self.tmp = self.mktemp()
        os.makedirs(self.tmp)
        root = Resource()
        root.putChild(b"", Data(PAGE, "text/html; charset=utf-8"))
        self.allowed_page = self.serve(root)
        self.other_page = self.serve(root)
        self.api, target = free_ports(2)
        self.lmproxy = Lmproxy(
            self,
            {
                "OpenAiApi": {
                    "ListenPort": self.api,
                    "ApiKeys": [KEY],
                    "CorsAllowedOrigins": [f"http://127.0.0.1:{self.allowed_page}"],
                },
                "Services": [
                    demo_service(MODEL, None, target, OpenAiApi=True, OpenAiApiModels=[MODEL])
                ],
            },
        )

    async def start(self) -> None:
        """Start lmproxy and the browser."""
        await self.lmproxy.start()
        self.driver = await self.in_browser(self.start_browser)
        self.addCleanup(self.quit_browser)

    def serve(self, root: Resource) -> int:
        """Serve C{root} on 127.0.0.1 on a port of the system's choosing; its port."""
        site = Site(root)  # a ServerFactory, which Twisted's annotation does not see
        port: IListeningPort = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    def call(self, page: int, key: str | None, stream: bool) -> dict[str, Any]:
        """Open the page served on C{page}, and run L{CHAT} in it (blocks)."""
        assert self.driver is not None
        self.driver.get(f"http://127.0.0.1:{page}/")
        self.driver.set_script_timeout(60)
        result: dict[str, Any] = self.driver.execute_async_script(
            CHAT, f"http://127.0.0.1:{self.api}", key, stream
        )
        return result

    async def test_allowed_page(self) -> None:
        """A chat, a streamed chat read piece by piece, and an error the page can read."""
        await self.start()
        answer = await self.in_browser(lambda: self.call(self.allowed_page, KEY, False))
        self.assertEqual(answer.get("status"), 200, answer)
        content = answer["document"]["choices"][0]["message"]["content"]
        self.assertRegex(content, r"^demo\(demo\) pid \d+: ")
        self.assertIn("hello from a page", content)

        streamed = await self.in_browser(lambda: self.call(self.allowed_page, KEY, True))
        self.assertEqual(streamed.get("status"), 200, streamed)
        self.assertTrue(streamed["type"].startswith("text/event-stream"), streamed)
        events = [
            line[len("data: ") :]
            for line in "".join(streamed["pieces"]).splitlines()
            if line.startswith("data: ")
        ]
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(event)["choices"] for event in events[:-1]]
        text = "".join(c[0]["delta"].get("content") or "" for c in chunks if c)
        self.assertEqual(text, content)
        self.assertGreater(len(chunks), 2)  # a word at a time

        refused = await self.in_browser(lambda: self.call(self.allowed_page, None, False))
        self.assertEqual(refused.get("status"), 401, refused)
        self.assertEqual(refused["document"]["error"]["code"], "invalid_api_key")

    async def test_other_page(self) -> None:
        """The preflight is refused: fetch fails in the page, and no model starts."""
        await self.start()
        failed = await self.in_browser(lambda: self.call(self.other_page, KEY, False))
        self.assertEqual(failed, {"error": "TypeError: Failed to fetch"})
        # Had lmproxy forwarded it, fetch would have failed only once the
        # model had started and answered (without the CORS headers).
        self.assertNotIn(f"{MODEL}: started", self.lmproxy.output)
        self.assertIn(f"{MODEL}: started", await self.chat_started())

    async def chat_started(self) -> str:
        """lmproxy's output once the allowed page's chat is answered (the check's control)."""
        answer = await self.in_browser(lambda: self.call(self.allowed_page, KEY, False))
        self.assertEqual(answer.get("status"), 200, answer)
        return self.lmproxy.output
