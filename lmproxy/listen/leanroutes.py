"""
Which requests the OpenAI port's hot path takes (L{LeanRoutes}), and what
forwarding them uses (L{Forwarding}); L{lmproxy.listen.leanforward}
forwards each.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from lmproxy.interfaces import IBackends
from lmproxy.listen.backendpool import IBackendConnections
from lmproxy.listen.front import FrontChannel
from lmproxy.listen.guard import HeaderLookup, Refusal
from lmproxy.listen.leanforward import LeanExchange
from lmproxy.listen.limits import RequestLimit
from lmproxy.listen.requesthead import RequestHead
from lmproxy.requeststats import RequestStats


@dataclass(frozen=True, slots=True)
class Forwarding:
    """
    What every forwarded request of the port uses.

    @ivar backends: hands out running backends.
    @ivar connections: the pooled backend connections.
    @ivar clock: times requests.
    @ivar stats: counts them.
    @ivar limits: the turns of the services that have C{MaxConcurrentRequests}.
    """

    backends: IBackends
    connections: IBackendConnections
    clock: IReactorTime
    stats: RequestStats
    limits: dict[str, RequestLimit]


class LeanRoutes:
    """
    The hot routes of the OpenAI port: C{POST}s of a JSON object to
    C{paths}, over HTTP/1.1, with a plain C{Host}, a C{Content-Length}
    within the port's limit, and nothing the gate refuses.  Everything else
    is twisted.web's.

    @param forwarding: what forwarding takes.
    @param paths: the hot paths.
    @param services: the service of each model id.
    @param gate: the port's gate (L{lmproxy.listen.openai.OpenAiApi.gate}).
    @param max_body_bytes: the port's body limit.
    """

    def __init__(
        self,
        forwarding: Forwarding,
        paths: frozenset[bytes],
        services: dict[str, str],
        gate: Callable[[HeaderLookup], Refusal | None],
        max_body_bytes: int,
    ) -> None:
        self._forwarding = forwarding
        self._paths = paths
        self._services = services
        self._gate = gate
        self._max_body_bytes = max_body_bytes

    def takes(self, head: RequestHead) -> bool:
        """Whether C{head} is a hot request (see the class)."""
        expect = head.fields.get(b"expect")
        return (
            head.method == b"POST"
            and head.path in self._paths
            and head.version == b"HTTP/1.1"
            and (head.content_length or 0) <= self._max_body_bytes
            and (expect is None or expect == [b"100-continue"])
            and head.plain_host()
            and self._gate(head) is None
        )

    def forward(self, channel: FrontChannel, head: RequestHead, body: bytes, raw: bytes) -> None:
        """Forward a request whose model names a service; give back any other."""
        model = self._model(body)
        service = None if model is None else self._services.get(model)
        if model is None or service is None:
            channel.fall_back(raw)
            return
        LeanExchange(self._forwarding, channel, head, body, service, model)

    def _model(self, body: bytes) -> str | None:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(document, dict):
            return None
        model = document.get("model")
        return model if isinstance(model, str) else None
