"""
Every listening port of lmproxy, by number, and how a reload of the config
changes them (L{PortTable}).

A reload goes in two steps, so that a config whose ports cannot be had
changes nothing: L{PortTable.prepare} opens the ports that the new config
adds (or moves to another address), and fails naming every one that cannot be
opened; L{PortTable.apply} then closes the ports the new config drops, hands
the opened ones to the reactor, and has each port kept serve its new owner.
A port kept on the same address keeps its socket, whoever serves it now
(service A's port may become service B's, or the OpenAI API's): clients that
connect meanwhile wait in its accept queue, and none is refused.

A port that moves to another address (C{0.0.0.0} to C{127.0.0.1}) needs a new
socket.  If the new one binds beside the old one, L{PortTable.prepare} opens
it.  If its bind fails with C{EADDRINUSE}, the one holding the port may be
lmproxy's own socket (a wildcard address and a specific one of the same port
exclude each other): that port is not refused, but re-bound by
L{PortTable.apply}, which closes the old socket first; if the new address
still cannot be had then (someone else holds it), the port listens on its old
address again, with an error in the log naming its key, and the next reload
tries again.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping

from attrs import define
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger

from lmproxy.listen.ports import AdoptedPort
from lmproxy.listen.sockets import (
    ListeningSocket,
    PortsUnavailable,
    listen_socket,
    open_ports,
    port_problem,
)
from lmproxy.logs import log_observer

_log = Logger(observer=log_observer)


def _packed(address: str) -> bytes | str:
    """C{address} in a form that compares equal for equal addresses (C{::1}, C{0::1})."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, address)
        except OSError:
            pass
    return address


@define
class _Listening:
    """One port of a L{PortTable}: its service, and the address its socket is bound to."""

    port: AdoptedPort
    address: str


class PortPlan:
    """
    What a reload changes in the ports of a L{PortTable}, and the sockets it
    opened for that (L{PortTable.prepare}); L{PortTable.apply} it, or
    L{cancel} it.

    @ivar keys: the new config's ports: (key, address) by port.
    """

    def __init__(
        self,
        table: PortTable,
        generation: int,
        keys: Mapping[int, tuple[str, str]],
        opened: dict[int, ListeningSocket],
        rebind: dict[int, tuple[str, str]],
    ) -> None:
        self._table = table
        self._generation = generation
        self.keys = dict(keys)
        self._opened = opened
        self._rebind = rebind
        self._used = False

    def cancel(self) -> None:
        """The reload is refused: close the sockets the plan opened (idempotent)."""
        self._used = True
        opened, self._opened = self._opened, {}
        for sock in opened.values():
            sock.close()


class PortTable(Service):
    """
    Owns every listening port of lmproxy, by port number: each serves its
    factory on a socket that listens already (an L{AdoptedPort}) while the
    table runs, and a reload changes them (see the module).
    """

    def __init__(self, reactor: object) -> None:
        """
        @param reactor: an C{IReactorFDSet}, C{IReactorSocket} and
            C{IReactorTime}, as for L{AdoptedPort}.
        """
        self._reactor = reactor
        self._ports: dict[int, _Listening] = {}
        self._generation = 0  # a plan applies to the ports it was prepared for

    def add(
        self, port: int, listening: ListeningSocket, factory: IProtocolFactory, banner: str
    ) -> None:
        """
        Serve C{factory} on C{port} from the moment the table starts (build time; at
        once if it runs).

        @param port: the port number.
        @param listening: its bound, listening socket (the table owns it from now on).
        @param factory: builds a protocol for each connection.
        @param banner: the line logged when it starts listening.
        """
        assert port not in self._ports, f"port {port} is in the table already"
        self._listen(port, listening, factory, banner)
        self._generation += 1

    @property
    def addresses(self) -> dict[int, str]:
        """The address each port listens on now, by port."""
        return {port: listening.address for port, listening in self._ports.items()}

    def factory(self, port: int) -> IProtocolFactory:
        """
        What serves C{port} now.

        @raise KeyError: the table has no such port.
        """
        return self._ports[port].port.factory

    def prepare(self, keys: Mapping[int, tuple[str, str]]) -> PortPlan:
        """
        Open every port of a new config that does not listen on its address
        yet; change nothing else.

        @param keys: the new config's ports: (key, address) by port, as
            L{lmproxy.listen.sockets.port_keys} gives them.
        @return: the plan to L{apply} (or to L{PortPlan.cancel}).
        @raise PortsUnavailable: naming every port that cannot be opened, with
            its key; whatever was opened for it is closed again.
        """
        wanted = {
            port: (key, address)
            for port, (key, address) in keys.items()
            if port not in self._ports or _packed(self._ports[port].address) != _packed(address)
        }
        opened, failed = open_ports(wanted)
        rebind: dict[int, tuple[str, str]] = {}
        problems = []
        for port in keys:
            if port not in failed:
                continue
            if port in self._ports and failed[port].errno == errno.EADDRINUSE:
                rebind[port] = keys[port]  # maybe held only by our own socket: see the module
            else:
                problems.append(port_problem(port, *keys[port], failed[port]))
        if problems:
            for sock in opened.values():
                sock.close()
            raise PortsUnavailable(problems)
        return PortPlan(self, self._generation, keys, opened, rebind)

    def apply(
        self, plan: PortPlan, factories: Mapping[int, tuple[IProtocolFactory, str]]
    ) -> Deferred[None]:
        """
        Make the ports those of C{plan}: the ports it does not have stop
        listening (connections accepted on them go on until they end); the
        ports kept serve their new factory from the next accepted connection
        on (the banner is logged if it changed); the new ones listen.

        @param plan: from L{prepare}, since which the table has not changed.
        @param factories: for every port of C{plan.keys}: the factory that
            serves it from now on, and its banner.
        @return: fires once the ports closed are closed.
        @raise ValueError: the plan was used, cancelled or is out of date, or
            a port has no factory (nothing is changed).
        """
        if plan._table is not self or plan._used or plan._generation != self._generation:
            raise ValueError("this port plan was used, cancelled, or prepared for other ports")
        missing = sorted(set(plan.keys) - set(factories))
        if missing:
            raise ValueError(f"no factory for ports {missing}")
        plan._used = True
        self._generation += 1
        # Started once more for the time of the changes, so that a factory
        # that moves from a port closed to another is never stopped on the
        # way (a factory counts the ports it is started on).
        pinned = list({id(f): f for f, _ in factories.values()}.values()) if self.running else []
        for factory in pinned:
            factory.doStart()
        closing: list[Deferred[None]] = []
        try:
            for port in [port for port in self._ports if port not in plan.keys]:
                closing.append(self._ports.pop(port).port.stopService())
            for port in plan.keys:
                factory, banner = factories[port]
                if port in plan._opened:  # new, or on a new address bound beside the old
                    old = self._ports.pop(port, None)
                    if old is not None:
                        closing.append(old.port.stopService())
                    self._listen(port, plan._opened.pop(port), factory, banner)
                elif port in plan._rebind:
                    closing.append(self._rebind(port, plan._rebind[port], factory, banner))
                else:
                    self._ports[port].port.serve(factory, banner)
        finally:
            for factory in pinned:
                factory.doStop()
        done = gatherResults(closing, consumeErrors=True)
        return done.addCallback(lambda _: None)

    def _listen(
        self, port: int, listening: ListeningSocket, factory: IProtocolFactory, banner: str
    ) -> None:
        adopted = AdoptedPort(self._reactor, listening, factory, banner)
        self._ports[port] = _Listening(adopted, listening.getsockname()[0])
        if self.running:
            adopted.startService()

    def _rebind(
        self, port: int, key_address: tuple[str, str], factory: IProtocolFactory, banner: str
    ) -> Deferred[None]:
        """Move C{port} to its new address, which only our own socket may be holding."""
        key, address = key_address
        old = self._ports.pop(port)
        # An AcceptingPort closes its socket at once: the port is free now.
        closed = old.port.stopService()
        try:
            listening = listen_socket(port, address)
        except OSError as e:
            _log.error(
                "Reload: {problem}; it listens on {old} again",
                problem=port_problem(port, key, address, e),
                old=old.address,
            )
            try:
                listening = listen_socket(port, old.address)
            except OSError as again:
                _log.error(
                    "Reload: {problem}: the port is closed",
                    problem=port_problem(port, key, old.address, again),
                )
                return closed
            banner = f"{banner} (on {old.address} still: see the error above)"
        self._listen(port, listening, factory, banner)
        return closed

    def startService(self) -> None:
        """Every port listens: the reactor accepts the clients the kernel queued, and more."""
        super().startService()
        for listening in self._ports.values():
            listening.port.startService()

    def stopService(self) -> Deferred[None]:
        """Stop every port; fires once they are closed."""
        super().stopService()
        ports, self._ports = self._ports, {}
        self._generation += 1
        stopped = gatherResults(
            [listening.port.stopService() for listening in ports.values()], consumeErrors=True
        )
        return stopped.addCallback(lambda _: None)
