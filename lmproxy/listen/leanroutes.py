"""
Which requests the OpenAI port's hot path takes (L{LeanRoutes}), and what
forwarding them uses (L{Forwarding}); L{lmproxy.listen.leanforward}
forwards each.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime

from lmproxy.interfaces import IBackends
from lmproxy.listen.backendpool import IBackendConnections
from lmproxy.listen.cors import CorsPolicy
from lmproxy.listen.front import FrontChannel
from lmproxy.listen.guard import HeaderLookup, Refusal
from lmproxy.listen.leanforward import LeanExchange
from lmproxy.listen.limits import RequestLimit
from lmproxy.listen.loadingfeedback import LoadingFeedback, is_streaming
from lmproxy.listen.modellist import ModelTable, with_model
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
    @ivar cors: the port's CORS policy, for the headers of every answer.
    """

    backends: IBackends
    connections: IBackendConnections
    clock: IReactorTime
    stats: RequestStats
    limits: dict[str, RequestLimit]
    cors: CorsPolicy = field(default_factory=CorsPolicy)


class LeanRoutes:
    """
    The hot routes of the OpenAI port: C{POST}s of a JSON object to
    C{paths}, over HTTP/1.1, with a plain C{Host}, a C{Content-Length}
    within the port's limit, and nothing the gate refuses.  Everything else
    is twisted.web's.

    @param forwarding: what forwarding takes.
    @param paths: the hot paths.
    @param models: the service of each model id, and the C{UseModelName}s.
    @param gate: the port's gate (L{lmproxy.listen.openai.OpenAiApi.gate}).
    @param max_body_bytes: the port's body limit: L{max_body_bytes}.
    @param feedback: the port's loading feedback: a stream that would get
        some is given back to twisted.web, whose routes send it.

    @ivar max_body_bytes: the port's body limit (changed in place on a reload).
    """

    def __init__(
        self,
        forwarding: Forwarding,
        paths: frozenset[bytes],
        models: ModelTable,
        gate: Callable[[HeaderLookup], Refusal | None],
        max_body_bytes: int,
        feedback: LoadingFeedback,
    ) -> None:
        self._feedback = feedback
        self._forwarding = forwarding
        self._paths = paths
        self._models = models
        self._gate = gate
        self.max_body_bytes = max_body_bytes

    def takes(self, head: RequestHead) -> bool:
        """Whether C{head} is a hot request (see the class)."""
        expect = head.fields.get(b"expect")
        return (
            head.method == b"POST"
            and head.path in self._paths
            and head.version == b"HTTP/1.1"
            and (head.content_length or 0) <= self.max_body_bytes
            and (expect is None or expect == [b"100-continue"])
            and head.plain_host()
            and self._gate(head) is None
        )

    def forward(self, channel: FrontChannel, head: RequestHead, body: bytes, raw: bytes) -> None:
        """Forward a request whose model names a service; give back any other."""
        document = _document(body)
        model = None if document is None else document.get("model")
        service = self._models.services.get(model) if isinstance(model, str) else None
        if (
            document is None
            or service is None
            or self._feedback.wanted(service, is_streaming(document))
        ):
            channel.fall_back(raw)
            return
        assert isinstance(model, str)
        forwarded_name = self._models.renamed(service, model)
        if forwarded_name is not None:
            body = with_model(document, forwarded_name)
        LeanExchange(self._forwarding, channel, head, body, service, model)


def _document(body: bytes) -> dict[str, Any] | None:
    """The JSON object of C{body}, or C{None}."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None
