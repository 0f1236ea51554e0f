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


def listen_socket(port: int, backlog: int = LISTEN_BACKLOG) -> ListeningSocket:
    """
    A TCP socket bound to C{port} on every IPv4 interface, listening.

    @param port: the port number.
    @param backlog: the length of its accept queue.
    @return: the listening, non-blocking socket.
    @raise OSError: the port cannot be opened.
    """
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        # As Twisted's own TCP ports do on POSIX: a restarted lmproxy can listen
        # again while connections of the previous one are in TIME_WAIT.
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind(("", port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listen_early(ports: Iterable[int]) -> dict[int, ListeningSocket | OSError]:
    """
    Try to open each port, before the config is known to be good.

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


def port_keys(config: Config) -> dict[int, str]:
    """
    The ports that C{config} listens on, each with the key that asks for it,
    named as the parser names places (C{Services[2] ("Gemma-27B").ListenPort},
    C{OpenAiApi.ListenPort}, C{ManagementApi.ListenPort}).

    @param config: a parsed config (its ports are distinct).
    @return: key by port, in the config's order.
    """
    import json  # loaded already by the parser; not on the way to listening

    keys: dict[int, str] = {}
    for index, service in enumerate(config.services):
        if service.listen_port is not None:
            name = json.dumps(service.name, ensure_ascii=False)
            keys[service.listen_port] = f"Services[{index}] ({name}).ListenPort"
    if config.openai_listen_port is not None:
        keys[config.openai_listen_port] = "OpenAiApi.ListenPort"
    if config.management_listen_port is not None:
        keys[config.management_listen_port] = "ManagementApi.ListenPort"
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
    keys: Mapping[int, str], early: Mapping[int, ListeningSocket | OSError] | None = None
) -> dict[int, ListeningSocket]:
    """
    Every port of C{keys} listening: those opened early, the others now.

    @param keys: the key that asks for each port (L{port_keys}).
    @param early: what L{listen_early} opened (this function owns those
        sockets from now on: the ones C{keys} does not want are closed).
    @return: the listening sockets, by port.
    @raise PortsUnavailable: naming every port that cannot be opened, with
        its key; every socket is closed.
    """
    early = early or {}
    for port, opened in early.items():
        if port not in keys and isinstance(opened, ListeningSocket):
            opened.close()
    listening: dict[int, ListeningSocket] = {}
    problems = []
    for port, key in keys.items():
        sock = early.get(port)
        if isinstance(sock, ListeningSocket):
            listening[port] = sock
            continue
        # Not tried yet, or failed a moment ago: try (again) now, which also
        # gives the error that is current.
        try:
            listening[port] = listen_socket(port)
        except OSError as e:
            why = e.strerror or str(e)
            problems.append(f"{key} {port}: {why[:1].lower()}{why[1:]}")
    if problems:
        for sock in listening.values():
            sock.close()
        raise PortsUnavailable(problems)
    return listening
