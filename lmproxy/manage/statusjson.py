"""
Turn a L{Snapshot} into the JSON objects of the management API.

C{/status} and the C{/events} stream both use these functions, so a service or
resource object is the same wherever a client sees it.  Pure: no I/O, no clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lmproxy.interfaces import (
    ResourceStatus,
    ServiceState,
    ServiceStatus,
    Shortage,
    Snapshot,
    StartFailure,
    WaitingFor,
)

JSONObject = dict[str, Any]


def rfc3339(seconds: float | None) -> str | None:
    """
    POSIX seconds as RFC 3339 in UTC with milliseconds and an explicit offset
    (C{2026-11-26T21:04:06.123+00:00}), or None.
    """
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")


def service_json(service: ServiceStatus) -> JSONObject:
    """One service as C{/status} lists it, with the new and the older field names."""
    return {
        "name": service.name,
        "listen_port": "" if service.listen_port is None else str(service.listen_port),
        "status": service.status,
        "waiting_connections": service.waiting_connections,
        "proxied_connections": service.proxied_connections,
        "queued_connections": service.queued_connections,
        "last_used": rfc3339(service.last_used),
        "service_url": service.service_url,
        "resource_requirements": dict(service.resource_requirements),
        "openai_models": list(service.openai_models),
        "pid": service.pid,
        "starts": service.starts,
        "failed_starts": service.failed_starts,
        "evictions": service.evictions,
        "last_failure": _failure_json(service.last_failure),
        "pinned": service.pinned,
        "pending_reload": service.pending_reload,
        "waiting_for": _waiting_json(service.waiting_for),
        "starting_since": rfc3339(service.starting_since),
        "start_estimate_seconds": service.start_estimate,
        # The names upstream's README documents, kept for its users' scripts.
        "is_running": service.status == ServiceState.RUNNING,
        "active_connections": service.waiting_connections + service.proxied_connections,
    }


def _waiting_json(waiting: WaitingFor | None) -> JSONObject | None:
    if waiting is None:
        return None
    return {
        "since": rfc3339(waiting.since),
        "resources": [_shortage_json(s) for s in waiting.shortages],
        "behind": list(waiting.behind),
    }


def _shortage_json(shortage: Shortage) -> JSONObject:
    return {
        "resource": shortage.resource,
        "needed": shortage.needed,
        "available": shortage.available,
        "held_by": list(shortage.held_by),
        "pinned": list(shortage.pinned),
        "in_use": list(shortage.in_use),
        "stopping": list(shortage.stopping),
    }


def _failure_json(failure: StartFailure | None) -> JSONObject | None:
    if failure is None:
        return None
    return {
        "at": rfc3339(failure.at),
        "reason": failure.reason,
        "output_tail": list(failure.output_tail),
        "retryable": failure.retryable,
        "retry_at": None if failure.retry_at is None else rfc3339(failure.retry_at),
    }


def resource_json(resource: ResourceStatus) -> JSONObject:
    """
    One resource as C{/status} maps it: upstream's fields with upstream's
    meanings, and C{available} (lmproxy's own: what a service could take now).
    C{measured} is null for static resources.
    """
    return {
        "name": resource.name,
        "total": resource.total,
        "measured": resource.measured,
        "reserved_by_starting_services": resource.reserved_by_starting_services,
        "in_use": resource.in_use,
        "free": resource.free,
        "available": resource.available,
        "usage_by_service": dict(resource.usage_by_service),
    }


def status_json(snapshot: Snapshot) -> JSONObject:
    """The whole C{/status} document."""
    services = [service_json(s) for s in snapshot.services]
    return {
        "started_at": rfc3339(snapshot.started_at),
        "services": services,
        "resources": {r.name: resource_json(r) for r in snapshot.resources},
        "all_services": services,
        "running_services": [s for s in services if s["is_running"]],
    }
