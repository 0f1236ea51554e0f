"""
Tests for L{lmproxy.listen.banners} and the plain-text helpers of
L{lmproxy.logs}: the start-up lines and log values as a person reads them.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, ServiceConfig
from lmproxy.listen.banners import management_banner, openai_banner, service_banner
from lmproxy.logs import address_text, amounts_text


class BannerTests(SynchronousTestCase):
    def test_apis(self) -> None:
        config = Config(
            services=(), openai_listen_address="0.0.0.0", management_listen_address="127.0.0.1"
        )
        self.assertEqual(
            openai_banner(config, 7070), "OpenAI API on http://localhost:7070/v1 (every interface)"
        )
        self.assertEqual(
            management_banner(config, 7071),
            "Dashboard and management API on http://127.0.0.1:7071/",
        )
        v6 = Config(services=(), openai_listen_address="::1")
        self.assertEqual(openai_banner(v6, 7070), "OpenAI API on http://[::1]:7070/v1")

    def test_service(self) -> None:
        service = ServiceConfig(
            name="small",
            command="x",
            proxy_target_host="127.0.0.1",
            proxy_target_port=18081,
            listen_port=8081,
            listen_address="0.0.0.0",
        )
        self.assertEqual(
            service_banner(service, 8081), "small: port 8081, forwarded to 127.0.0.1:18081"
        )


class PlainTextTests(SynchronousTestCase):
    def test_addresses(self) -> None:
        self.assertEqual(address_text(IPv4Address("TCP", "127.0.0.1", 42936)), "127.0.0.1:42936")
        self.assertEqual(address_text(IPv6Address("TCP", "::1", 42936)), "[::1]:42936")
        self.assertEqual(
            address_text(UNIXAddress(b"/run/x.sock")), str(UNIXAddress(b"/run/x.sock"))
        )

    def test_amounts(self) -> None:
        self.assertEqual(amounts_text({"RAM": 200, "VRAM": 12000}), "RAM 200, VRAM 12000")
        self.assertEqual(amounts_text({}), "nothing")
