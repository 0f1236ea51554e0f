"""
Integration tests of who may reach lmproxy: a real C{lmproxy} command whose
ports listen where C{ListenAddress} says (IPv4 and IPv6), whose APIs want
keys kept in a file and in an environment variable, and whose management API
refuses a rebound Host; real sockets on 127.0.0.1 and ::1.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import treq
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import Lmproxy, demo_service, free_ports
from tests.test_listen_address import connects, has_ipv6_loopback

MANAGEMENT_KEY = "mk-0123456789abcdef"
OPENAI_KEY = "sk-0123456789abcdef"
KEY_VARIABLE = "LMPROXY_TEST_OPENAI_KEY"


def listening_on(address: str, port: int) -> bool:
    """Whether something listens on C{address}:C{port}, read from /proc (it never connects)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    packed = socket.inet_pton(family, address)
    # /proc/net/tcp* writes each 32-bit word of the address in host byte order.
    words = [packed[i : i + 4][::-1].hex().upper() for i in range(0, len(packed), 4)]
    wanted = f"{''.join(words)}:{port:04X}"
    table = "/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp"
    rows = Path(table).read_text().splitlines()[1:]
    return any(row.split()[1] == wanted and row.split()[3] == "0A" for row in rows)


async def request(
    method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    response = await treq.request(
        method, url, headers=headers, data=body, persistent=False, timeout=20
    )
    content = await response.content()
    found = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, found, content


class AccessTests(TestCase):
    timeout = 120

    async def test_addresses_keys_and_hosts(self) -> None:
        if not has_ipv6_loopback():
            raise SkipTest("no IPv6 loopback on this machine")
        v6_port, v6_target, model_target, openai, management = free_ports(5)
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        (directory / "management.key").write_text(MANAGEMENT_KEY + "\n")
        os.environ[KEY_VARIABLE] = OPENAI_KEY
        self.addCleanup(os.environ.pop, KEY_VARIABLE, None)
        config = {
            "ListenAddress": "127.0.0.1",
            "Services": [
                demo_service("v6", v6_port, v6_target, ListenAddress="::1"),
                demo_service("model", None, model_target, OpenAiApi=True),
            ],
            "OpenAiApi": {"ListenPort": openai, "ApiKeys": [{"Env": KEY_VARIABLE}]},
            "ManagementApi": {
                "ListenPort": management,
                "ApiKeys": [{"File": str(directory / "management.key")}],
            },
        }
        lmproxy = Lmproxy(self, config, [sys.executable, "-m", "lmproxy"])
        await lmproxy.start()
        for address, port in [("::1", v6_port), ("127.0.0.1", openai), ("127.0.0.1", management)]:
            self.assertTrue(listening_on(address, port), (address, port))
        self.assertFalse(listening_on("0.0.0.0", management))
        self.assertFalse(connects("127.0.0.1", v6_port))
        self.assertNotIn(MANAGEMENT_KEY, lmproxy.output)
        self.assertNotIn("ManagementApi: listens on", lmproxy.output)  # loopback: no warning

        base = f"http://127.0.0.1:{management}"
        code, headers, body = await request("GET", base + "/status")
        self.assertEqual((code, headers["www-authenticate"]), (401, "Bearer"))
        self.assertIn("ManagementApi.ApiKeys", json.loads(body)["error"])
        authorized = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
        code, _, body = await request("GET", base + "/status", authorized)
        self.assertEqual(code, 200)
        self.assertNotIn(MANAGEMENT_KEY.encode(), body)
        self.assertEqual((await request("GET", base + "/"))[0], 200)  # the page loads
        # DNS rebinding: a right key would not even help the attacker's page.
        evil = f"rebind.evil.example:{management}"
        code, _, body = await request(
            "POST",
            base + "/services/model/start",
            {"Host": evil, "Origin": f"http://{evil}", **authorized},
        )
        self.assertEqual(code, 403, body)
        code, _, body = await request(
            "POST", base + "/services/model/stop", {"Origin": "http://[", **authorized}
        )
        self.assertEqual(code, 403, body)

        chat = json.dumps({"model": "model", "messages": [{"role": "user", "content": "hi"}]})
        url = f"http://127.0.0.1:{openai}/v1/chat/completions"
        code, _, body = await request(
            "POST", url, {"Content-Type": "application/json"}, chat.encode()
        )
        self.assertEqual(code, 401)
        self.assertEqual(json.loads(body)["error"]["code"], "invalid_api_key")
        code, _, body = await request(
            "POST",
            url,
            {"Content-Type": "text/plain", "Origin": "http://evil.example"},
            chat.encode(),
        )
        self.assertEqual(code, 403)
        # Nothing started for either.
        _, _, body = await request("GET", base + "/status", authorized)
        states = {s["name"]: s["status"] for s in json.loads(body)["services"]}
        self.assertEqual(states, {"v6": "stopped", "model": "stopped"})
        code, _, body = await request(
            "POST",
            url,
            {"Content-Type": "application/json", "x-api-key": OPENAI_KEY},
            chat.encode(),
        )
        self.assertEqual(code, 200, body)
        self.assertEqual(json.loads(body)["object"], "chat.completion")
        self.assertEqual(await lmproxy.stop(), 0)
