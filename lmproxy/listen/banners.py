"""
The start-up lines that say what listens where: one per API with the URL to
open (the OpenAI API, the dashboard) and one per service port with where it
forwards to.  Logged by each port when it starts listening
(L{lmproxy.listen.ports.AdoptedPort}).
"""

from __future__ import annotations

from lmproxy.config import Config, ServiceConfig

_EVERYWHERE = frozenset({"0.0.0.0", "::"})


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _url(address: str, port: int, path: str) -> str:
    """The URL to open: localhost when the port listens on every interface."""
    host = "localhost" if address in _EVERYWHERE else _host(address)
    where = " (every interface)" if address in _EVERYWHERE else ""
    return f"http://{host}:{port}{path}{where}"


def openai_banner(config: Config, port: int) -> str:
    """The OpenAI API's line."""
    return f"OpenAI API on {_url(config.openai_listen_address, port, '/v1')}"


def management_banner(config: Config, port: int) -> str:
    """The management API's line: the dashboard's URL."""
    return f"Dashboard and management API on {_url(config.management_listen_address, port, '/')}"


def service_banner(service: ServiceConfig, port: int) -> str:
    """A service port's line: where it listens and where it forwards."""
    target = f"{_host(service.proxy_target_host)}:{service.proxy_target_port}"
    where = "" if service.listen_address in _EVERYWHERE else f" on {_host(service.listen_address)}"
    return f"{service.name}: port {port}{where}, forwarded to {target}"
