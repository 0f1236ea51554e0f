"""
What the OpenAI port says about its models: the routing table from each
model id (and alias) to its service, and the entries of C{GET /v1/models},
each with lmproxy's state of its service.

An entry is OpenAI's C{{"id", "object": "model", "created", "owned_by"}}
plus C{status}: C{{"value": "stopped" | "starting" | "running" | "failed"}},
the field llama.cpp's router mode gives its models, so that UIs that read it
(Open WebUI and others) show which models are loaded; and, when the service
has them, its C{aliases} and C{metadata}.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import frozen

from lmproxy.config import Config, ServiceConfig
from lmproxy.interfaces import ServiceState, ServiceStatus, Snapshot

OWNED_BY = "lmproxy"

STOPPED, STARTING, RUNNING, FAILED = "stopped", "starting", "running", "failed"
"""The values of an entry's C{status}."""

_VALUES = {
    ServiceState.STOPPED: STOPPED,
    ServiceState.WAITING_FOR_RESOURCES: STARTING,
    ServiceState.STARTING: STARTING,
    ServiceState.RUNNING: RUNNING,
    # Being stopped: it answers nothing more until it has started again.
    ServiceState.STOPPING: STOPPED,
}


def model_status(status: ServiceStatus | None) -> dict[str, Any]:
    """
    The C{status} of the entries of a service: C{failed} while it backs off
    after a failed start (a request now is refused at once), with the
    failure's C{reason}.

    @param status: the service's state now; C{None} for one the supervisor
        does not know yet (a reload in progress): stopped.
    """
    if status is None:
        return {"value": STOPPED}
    failure = status.last_failure
    if status.status is ServiceState.STOPPED and failure and failure.retry_at is not None:
        return {"value": FAILED, "reason": failure.reason}
    return {"value": _VALUES[status.status]}


@frozen
class ListedService:
    """
    A service of the OpenAI port, as the model list shows it.

    @ivar name: its name.
    @ivar models: its model ids, in config order.
    @ivar aliases: its other ids, listed in its entries only.
    @ivar unlisted: left out of the list.
    @ivar metadata: shown in its entries when not empty.
    """

    name: str
    models: tuple[str, ...]
    aliases: tuple[str, ...]
    unlisted: bool
    metadata: dict[str, Any]

    @classmethod
    def of(cls, service: ServiceConfig) -> ListedService:
        """The listing of C{service}."""
        return cls(
            service.name,
            service.openai_api_models,
            service.aliases,
            service.unlisted,
            dict(service.metadata),
        )

    def entry(self, model: str, created: int, status: ServiceStatus | None) -> dict[str, Any]:
        """
        The entry of one of its ids.

        @param model: the id (one of its models or aliases).
        @param created: when lmproxy started, POSIX seconds.
        @param status: the service's state now.
        """
        entry: dict[str, Any] = {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": OWNED_BY,
            "status": model_status(status),
        }
        if self.aliases:
            entry["aliases"] = list(self.aliases)
        if self.metadata:
            entry["metadata"] = self.metadata
        return entry


class ModelTable:
    """
    The models of the OpenAI port: which service serves each id, and the
    listing of each service.  L{reconfigure} changes it in place, so that
    whoever shares L{services} (the hot path) follows a reload.

    @ivar services: model id or alias to service name.
    @ivar renames: service name to its C{UseModelName}, for those that have one.
    """

    def __init__(self) -> None:
        self.services: dict[str, str] = {}
        self.renames: dict[str, str] = {}
        self._listed: dict[str, ListedService] = {}

    def reconfigure(self, config: Config) -> None:
        """Follow C{config}: the services with C{OpenAiApi}, in config order."""
        listed = [ListedService.of(service) for service in config.services if service.openai_api]
        self._listed = {service.name: service for service in listed}
        self.services.clear()
        self.services.update(
            (model, service.name)
            for service in listed
            for model in (*service.models, *service.aliases)
        )
        self.renames.clear()
        self.renames.update(
            (service.name, service.use_model_name)
            for service in config.services
            if service.openai_api and service.use_model_name is not None
        )

    def renamed(self, service: str, model: str) -> str | None:
        """
        The name that a body for C{model} forwarded to C{service} must carry
        instead (its C{UseModelName}), or C{None} when it stays as it is.
        """
        name = self.renames.get(service)
        return None if name == model else name

    def listing(self, model: str) -> ListedService | None:
        """The listing of the service of C{model} (an id or an alias), or C{None}."""
        service = self.services.get(model)
        return None if service is None else self._listed[service]

    def entries(self, snapshot: Snapshot) -> list[dict[str, Any]]:
        """
        The entries of C{GET /v1/models}: every listed model id, in config
        order, with its service's state in C{snapshot}.
        """
        created, states = _states(snapshot)
        return [
            service.entry(model, created, states.get(service.name))
            for service in self._listed.values()
            if not service.unlisted
            for model in service.models
        ]

    def entry(self, model: str, snapshot: Snapshot) -> dict[str, Any] | None:
        """
        The entry of C{model} (an id, listed or not, or an alias) with its
        service's state in C{snapshot}, or C{None} for an unknown id.
        """
        service = self.listing(model)
        if service is None:
            return None
        created, states = _states(snapshot)
        return service.entry(model, created, states.get(service.name))


def _states(snapshot: Snapshot) -> tuple[int, dict[str, ServiceStatus]]:
    """When lmproxy started, and the state of each service by name."""
    return int(snapshot.started_at), {status.name: status for status in snapshot.services}


def with_model(document: dict[str, Any], model: str) -> bytes:
    """
    The JSON body to forward for C{document} with C{model} as its C{model}
    (a service's C{UseModelName}), every other member as it was.

    @param document: the request's body, parsed.
    @param model: the name to put in.
    """
    return json.dumps({**document, "model": model}, ensure_ascii=False).encode("utf-8")
