"""
lmproxy's listening sockets, opened with the standard library alone.

The C{lmproxy} command opens them before it imports the config's parser and
Twisted (L{listen_early}: whatever the config's text seems to ask for); once
the config is parsed, L{take_ports} keeps what the config really asks for,
opens what is missing and closes the rest.  C{twistd -n lmproxy} opens them
with L{take_ports} alone while it builds the service tree.  Either way every
port listens before anything slow, clients that connect early wait in the
kernel's accept queue, and L{lmproxy.listen.ports.AdoptedPort} hands each
socket to the reactor when the tree starts.

Built on C{_socket}, the C module that the C{socket} module wraps: importing
C{socket} costs 7 ms (its enums, C{selectors}) on the way to the first
listening port, and its sockets add nothing that a listening socket needs
(C{socket.socket} is a subclass of C{_socket.socket}).
"""

from __future__ import annotations

import _socket
from collections.abc import Iterable, Mapping

# Not typing.TYPE_CHECKING: importing typing costs ~10 ms on the way to the
# first listening port.  Type checkers take a TYPE_CHECKING of any origin as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from lmproxy.config import Config

ListeningSocket = _socket.socket
"""What L{listen_socket} returns (C{socket.socket} is one too)."""

LISTEN_BACKLOG = 1024
"""
The accept queue of every port: bursts of new clients (hundreds of concurrent
requests) must not overflow it (with Twisted's default of 50 they are dropped,
and retry after 1 s).
"""


DEFAULT_ADDRESS = "0.0.0.0"
"""Every IPv4 interface: where a port listens unless the config says otherwise."""


def listen_socket(
    port: int, address: str = DEFAULT_ADDRESS, backlog: int = LISTEN_BACKLOG
) -> ListeningSocket:
    """
    A TCP socket bound to C{port} on C{address}, listening.

    @param port: the port number.
    @param address: an IPv4 or IPv6 address literal (C{"0.0.0.0"} and
        C{"::"} are every interface; what C{"::"} does with IPv4 is the
        system's default, on Linux to accept it too).
    @param backlog: the length of its accept queue.
    @return: the listening, non-blocking socket.
    @raise OSError: the port cannot be opened.
    """
    family = _socket.AF_INET6 if ":" in address else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        # As Twisted's own TCP ports do on POSIX: a restarted lmproxy can listen
        # again while connections of the previous one are in TIME_WAIT.
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listen_early(ports: Iterable[int]) -> dict[int, ListeningSocket | OSError]:
    """
    Try to open each port on L{DEFAULT_ADDRESS}, before the config is known
    to be good.

    @param ports: the port numbers.
    @return: by port, its listening socket, or why it could not be opened
        (reported only if the config turns out to want it: see L{take_ports}).
    """
    opened: dict[int, ListeningSocket | OSError] = {}
    for port in ports:
        if port not in opened:
            try:
                opened[port] = listen_socket(port)
            except OSError as e:
                opened[port] = e
    return opened


def port_keys(config: Config) -> dict[int, tuple[str, str]]:
    """
    The ports that C{config} listens on, each with the key that asks for it,
    named as the parser names places (C{Services[2] ("Gemma-27B").ListenPort},
    C{OpenAiApi.ListenPort}, C{ManagementApi.ListenPort}), and its address.

    @param config: a parsed config (its ports are distinct).
    @return: (key, address) by port, in the config's order.
    """
    from lmproxy.config.problems import quote  # loaded already by the parser

    keys: dict[int, tuple[str, str]] = {}
    for index, service in enumerate(config.services):
        if service.listen_port is not None:
            where = f"Services[{index}] ({quote(service.name)}).ListenPort"
            keys[service.listen_port] = (where, service.listen_address)
    if config.openai_listen_port is not None:
        where = "OpenAiApi.ListenPort"
        keys[config.openai_listen_port] = (where, config.openai_listen_address)
    if config.management_listen_port is not None:
        where = "ManagementApi.ListenPort"
        keys[config.management_listen_port] = (where, config.management_listen_address)
    return keys


class PortsUnavailable(Exception):
    """
    Ports of the config cannot be opened.

    @ivar problems: one line per port, e.g.
        C{Services[2] ("Gemma-27B").ListenPort 8081: address already in use}.
    """

    def __init__(self, problems: list[str]) -> None:
        """
        @param problems: one line per port that cannot be opened.
        """
        super().__init__("\n".join(problems))
        self.problems = problems


def take_ports(
    keys: Mapping[int, tuple[str, str]],
    early: Mapping[int, ListeningSocket | OSError] | None = None,
) -> dict[int, ListeningSocket]:
    """
    Every port of C{keys} listening on its address: those opened early (on
    that address), the others now.

    @param keys: the key that asks for each port, and its address (L{port_keys}).
    @param early: what L{listen_early} opened (this function owns those
        sockets from now on: the ones C{keys} does not want, on that port and
        address, are closed).
    @return: the listening sockets, by port.
    @raise PortsUnavailable: naming every port that cannot be opened, with
        its key (and its address, unless it is L{DEFAULT_ADDRESS}); every
        socket is closed.
    """
    early = early or {}
    wanted: dict[int, ListeningSocket] = {}
    for port, opened in early.items():
        if isinstance(opened, ListeningSocket):
            if port in keys and opened.getsockname()[0] == keys[port][1]:
                wanted[port] = opened
            else:
                opened.close()
    listening, failed = open_ports({p: a for p, a in keys.items() if p not in wanted})
    listening.update(wanted)
    problems = [port_problem(port, *keys[port], failed[port]) for port in keys if port in failed]
    if problems:
        for sock in listening.values():
            sock.close()
        raise PortsUnavailable(problems)
    # In the order of keys, as before.
    return {port: listening[port] for port in keys}


def open_ports(
    keys: Mapping[int, tuple[str, str]],
) -> tuple[dict[int, ListeningSocket], dict[int, OSError]]:
    """
    Try to open every port of C{keys} on its address, now.

    @param keys: the key that asks for each port, and its address (L{port_keys}).
    @return: the sockets listening, by port; and why each of the others
        could not be opened (the caller owns the sockets).
    """
    listening: dict[int, ListeningSocket] = {}
    failed: dict[int, OSError] = {}
    for port, (_key, address) in keys.items():
        try:
            listening[port] = listen_socket(port, address)
        except OSError as e:
            failed[port] = e
    return listening, failed


def port_problem(port: int, key: str, address: str, error: OSError) -> str:
    """
    The line of L{PortsUnavailable} for a port that cannot be opened, e.g.
    C{Services[2] ("Gemma-27B").ListenPort 8081: address already in use}.

    @param port: the port number.
    @param key: the key that asks for it.
    @param address: its address (named unless it is L{DEFAULT_ADDRESS}).
    @param error: why it cannot be opened.
    """
    why = error.strerror or str(error)
    where = "" if address == DEFAULT_ADDRESS else f" on {address}"
    return f"{key} {port}{where}: {why[:1].lower()}{why[1:]}"
