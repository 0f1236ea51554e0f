"""
Tests for C{ListenAddress} in L{lmproxy.listen.sockets} and in the early
scan of L{lmproxy.launch.ports_in}: each port listens on its address, IPv4
or IPv6, and never on one the config did not ask for.  Real sockets on ports
the OS chose.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from lmproxy.config import Config, ServiceConfig
from lmproxy.launch import ports_in
from lmproxy.listen.sockets import (
    ListeningSocket,
    PortsUnavailable,
    listen_early,
    listen_socket,
    port_keys,
    take_ports,
)
from tests.harness import free_ports


def has_ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1 (checked when the tests run)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def connects(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as client:
        client.settimeout(2)
        return client.connect_ex((address, port)) == 0


class ListenSocketTests(SynchronousTestCase):
    def setUp(self) -> None:
        [self.port] = free_ports(1)

    def listen(self, address: str) -> ListeningSocket:
        sock = listen_socket(self.port, address)
        self.addCleanup(sock.close)
        return sock

    def test_ipv4_loopback_only(self) -> None:
        sock = self.listen("127.0.0.1")
        self.assertEqual(sock.getsockname(), ("127.0.0.1", self.port))
        self.assertTrue(connects("127.0.0.1", self.port))

    def test_ipv6_loopback(self) -> None:
        if not has_ipv6_loopback():
            raise SkipTest("no IPv6 loopback on this machine")
        sock = self.listen("::1")
        self.assertEqual(sock.family, socket.AF_INET6)
        self.assertEqual(sock.getsockname()[:2], ("::1", self.port))
        self.assertTrue(connects("::1", self.port))
        self.assertFalse(connects("127.0.0.1", self.port))

    def test_default_is_every_ipv4_interface(self) -> None:
        self.assertEqual(listen_socket.__defaults__, ("0.0.0.0", 1024))


def _config(port: int, address: str) -> Config:
    service = ServiceConfig(
        name="a", command="x", proxy_target_port=1, listen_port=port, listen_address=address
    )
    return Config(services=(service,))


class TakePortsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ports = free_ports(2)

    def test_port_keys_carry_the_addresses(self) -> None:
        a, b = self.ports
        config = Config(
            services=(
                ServiceConfig(
                    name="s", command="x", proxy_target_port=1, listen_port=a, listen_address="::1"
                ),
            ),
            openai_listen_port=b,
            openai_listen_address="127.0.0.1",
            management_listen_port=7071,
        )
        self.assertEqual(
            port_keys(config),
            {
                a: ('Services[0] ("s").ListenPort', "::1"),
                b: ("OpenAiApi.ListenPort", "127.0.0.1"),
                7071: ("ManagementApi.ListenPort", "0.0.0.0"),
            },
        )

    def test_early_socket_on_another_address_is_replaced(self) -> None:
        """Should the early scan ever bind a port the config puts elsewhere, it moves there."""
        port = self.ports[0]
        early = listen_early([port])
        taken = take_ports(port_keys(_config(port, "127.0.0.1")), early)
        self.addCleanup(taken[port].close)
        first = early[port]
        assert isinstance(first, ListeningSocket)
        self.assertIsNot(taken[port], first)
        self.assertEqual(first.fileno(), -1)  # closed
        self.assertEqual(taken[port].getsockname(), ("127.0.0.1", port))

    def test_early_socket_on_the_address_is_kept(self) -> None:
        port = self.ports[0]
        early = listen_early([port])
        taken = take_ports(port_keys(_config(port, "0.0.0.0")), early)
        self.addCleanup(taken[port].close)
        self.assertIs(taken[port], early[port])

    def test_an_address_not_here(self) -> None:
        """The message names the address (192.0.2.1 is for documentation: on no machine)."""
        port = self.ports[0]
        error = self.assertRaises(
            PortsUnavailable, take_ports, port_keys(_config(port, "192.0.2.1")), {}
        )
        self.assertEqual(
            error.problems,
            [f'Services[0] ("a").ListenPort {port} on 192.0.2.1: cannot assign requested address'],
        )


class EarlyScanTests(SynchronousTestCase):
    """The early scan binds the default address only: nothing when an address may be set."""

    def test_no_address(self) -> None:
        self.assertEqual(ports_in('{ListenPort: 5, Args: "a \\"b\\" \\\\n"}'), [5])
        # In a comment or a string, it is not a key.
        text = '{ListenPort: 5, Args: "ListenAddress: ::1"} // ListenAddress: "::1"'
        self.assertEqual(ports_in(text), [5])

    def test_an_address_anywhere(self) -> None:
        for text in [
            '{ListenAddress: "127.0.0.1", ListenPort: 5}',
            '{"listenaddress": "::1", ListenPort: 5}',
            "{ListenPort: 5, 'ListenAddress' : '::1'}",
            # casefold(), as the parser matches keys: ß is ss.
            '{"ListenAddreß": "::1", ListenPort: 5}',
        ]:
            self.assertEqual(ports_in(text), [], text)

    def test_escapes_that_could_spell_it(self) -> None:
        for text in [
            '{"Listen\\u0041ddress": "::1", ListenPort: 5}',
            '{"Listen\\x41ddress": "::1", ListenPort: 5}',
            '{"Listen\\Address": "::1", ListenPort: 5}',
            '{"Listen\\\nAddress": "::1", ListenPort: 5}',
            "{Listen\\u0041ddress: '::1', ListenPort: 5}",
        ]:
            self.assertEqual(ports_in(text), [], text)
