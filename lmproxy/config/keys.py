"""
Every config key, declared once.

Each kind of config object has a L{Section} here; each of its keys is a
L{Key}: JSON name, converter, one-line doc, the model attribute it fills
(whose default is the key's default), and whether it is required.  The parser
(L{check_object}), its messages about unknown, repeated and missing keys, the
model's keyword arguments (L{Section.arguments}) and the README test are
derived from these declarations; code elsewhere names a key by its
declaration (C{ServiceKeys.LISTEN_PORT}), never by a string.

The keys of the C{OpenAiApi} and C{ManagementApi} objects are declared in
L{lmproxy.config.apis}, those of a resource in L{lmproxy.config.resourcekeys}
(all can be imported from here too), those of an C{ApiKeys} entry in
L{lmproxy.config.access}.

The rules between keys of one object are each section's L{Section.check}.
The rules that fill an attribute from several keys, or that involve several
objects, are in L{lmproxy.config.build}.
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs import frozen

from lmproxy.config.access import ip_address
from lmproxy.config.apis import ManagementApiKeys, OpenAiApiKeys
from lmproxy.config.model import DEFAULT_LISTEN_ADDRESS, Config, ServiceConfig
from lmproxy.config.problems import At
from lmproxy.config.resourcekeys import ResourceKeys as ResourceKeys
from lmproxy.config.resourcekeys import check_resources
from lmproxy.config.schema import Fields, Key, Section, check_named, check_object, nested_object
from lmproxy.config.values import (
    Invalid,
    JsonObject,
    boolean,
    characters,
    count,
    display_name,
    environment,
    idle_seconds,
    json_object,
    log_level,
    milliseconds,
    model_ids,
    port,
    positive_count,
    seconds,
    show,
    target_port,
    template,
    text,
)

# ResourceKeys and check_resources are declared in lmproxy.config.resourcekeys.

_SERVICE = attrs.fields(ServiceConfig)
_CONFIG = attrs.fields(Config)


def _requirements(value: Any, at: At) -> dict[str, int]:
    """C{ResourceRequirements}: resource name to amount (bad entries, reported, left out)."""
    amounts = check_named(value, at, count)
    return {name: amount for name, amount in amounts.items() if amount is not None}


class ServiceKeys(Section):
    """The keys of an element of C{Services} (see L{check_services})."""

    # Missing keys are reported in this order: Name, Command, ProxyTargetPort.
    NAME = Key(
        "Name",
        display_name,
        doc="Unique, no control characters.  Also the default OpenAI model id and log file name.",
        fills=_SERVICE.name,
        missing="missing or empty (required)",
    )
    COMMAND = Key(
        "Command",
        text,
        doc="The program to start.",
        fills=_SERVICE.command,
        missing="missing or empty (required)",
    )
    ARGS = Key(
        "Args",
        text,
        doc="Its arguments, one string split into words like a shell would, without a shell.",
        fills=_SERVICE.args,
    )
    # No fills for these two: build._service makes the paths absolute.
    WORK_DIR = Key("WorkDir", text, doc="Its working directory; default lmproxy's.")
    LOG_FILE_PATH = Key(
        "LogFilePath",
        text,
        doc="Where its output is appended; default logs/<Name>.log, the Name made one file name.",
    )
    LISTEN_PORT = Key(
        "ListenPort",
        port,
        doc="Where clients connect; may be left out when OpenAiApi is true.",
        fills=_SERVICE.listen_port,
    )
    # No fills: build._service falls back to the top-level ListenAddress.
    LISTEN_ADDRESS = Key(
        "ListenAddress",
        ip_address,
        doc="The IP address its ListenPort listens on; default the top-level ListenAddress.",
    )
    PROXY_TARGET_HOST = Key(
        "ProxyTargetHost",
        text,
        doc="The host where the started program listens.",
        fills=_SERVICE.proxy_target_host,
    )
    PROXY_TARGET_PORT = Key(
        "ProxyTargetPort",
        target_port,
        doc="The port where the started program listens.",
        fills=_SERVICE.proxy_target_port,
        missing="missing (required): the port the service itself listens on",
    )
    # Upstream's own README example writes TargetPort.
    TARGET_PORT = Key(
        "TargetPort",
        target_port,
        doc="Another name for ProxyTargetPort.",
        alias_of=PROXY_TARGET_PORT,
    )
    HEALTHCHECK_COMMAND = Key(
        "HealthcheckCommand",
        text,
        doc="A shell command that must exit 0 before the service counts as ready.",
        fills=_SERVICE.healthcheck_command,
    )
    HEALTHCHECK_INTERVAL = Key(
        "HealthcheckIntervalMilliseconds",
        milliseconds,
        doc="How often to run the HealthcheckCommand.",
        fills=_SERVICE.healthcheck_interval,
    )
    STARTUP_TIMEOUT = Key(
        "StartupTimeoutMilliseconds",
        milliseconds,
        doc="How long a start may take until the service is ready.",
        fills=_SERVICE.startup_timeout,
    )
    # No fills: build._service falls back to the global one for idle_timeout.
    SHUT_DOWN_AFTER_INACTIVITY = Key(
        "ShutDownAfterInactivitySeconds",
        idle_seconds,
        doc="Overrides the global ShutDownAfterInactivitySeconds for this service; -1: never.",
    )
    PINNED = Key(
        "Pinned",
        boolean,
        doc="Never evicted to make room for another service.",
        fills=_SERVICE.pinned,
    )
    START_ON_LAUNCH = Key(
        "StartOnLaunch",
        boolean,
        doc="Started when lmproxy starts, without waiting for a client.",
        fills=_SERVICE.start_on_launch,
    )
    ENV = Key(
        "Env",
        environment,
        doc="Environment variables added to lmproxy's for its commands.",
        fills=_SERVICE.env,
    )
    RESTART_ON_CONNECTION_FAILURE = Key(
        "RestartOnConnectionFailure",
        boolean,
        doc="Restart the service when a connection to it fails.",
        fills=_SERVICE.restart_on_connection_failure,
    )
    KILL_COMMAND = Key(
        "KillCommand",
        text,
        doc="A shell command run first to stop the service.",
        fills=_SERVICE.kill_command,
    )
    CONSIDER_STOPPED_ON_PROCESS_EXIT = Key(
        "ConsiderStoppedOnProcessExit",
        boolean,
        doc="Whether the service is stopped when its process exits (false for launchers).",
        fills=_SERVICE.consider_stopped_on_process_exit,
    )
    OPENAI_API = Key(
        "OpenAiApi", boolean, doc="Serve the service on the OpenAI port.", fills=_SERVICE.openai_api
    )
    # No fills: build._models gives openai_api_models, (Name,) by default.
    OPENAI_API_MODELS = Key(
        "OpenAiApiModels",
        model_ids,
        doc="The model ids it serves there; default its Name.",
    )
    ALIASES = Key(
        "Aliases",
        model_ids,
        doc="More model ids it serves there, listed in its entries' aliases, not as entries.",
        fills=_SERVICE.aliases,
    )
    USE_MODEL_NAME = Key(
        "UseModelName",
        display_name,
        doc="The model name put in the bodies forwarded to it, instead of the one asked for.",
        fills=_SERVICE.use_model_name,
    )
    UNLISTED = Key(
        "Unlisted", boolean, doc="Served, but not listed by /v1/models.", fills=_SERVICE.unlisted
    )
    METADATA = Key(
        "Metadata", json_object, doc="Shown in its /v1/models entries.", fills=_SERVICE.metadata
    )
    # No fills: build._service renders service_url, DefaultServiceUrl by default.
    SERVICE_URL = Key(
        "ServiceUrl",
        template,
        doc="Its dashboard link, a template like DefaultServiceUrl; null means no link.",
        keeps_null=True,
    )
    MAX_CONCURRENT_REQUESTS = Key(
        "MaxConcurrentRequests",
        positive_count,
        doc="Requests forwarded to it at once on the OpenAI port, at most; more wait in turn.",
        fills=_SERVICE.max_concurrent_requests,
    )
    MAX_QUEUED_REQUESTS = Key(
        "MaxQueuedRequests",
        count,
        doc="Requests that may wait for one of its MaxConcurrentRequests; more get 429.",
        fills=_SERVICE.max_queued_requests,
    )
    MAX_CONNECTIONS = Key(
        "MaxConnections",
        positive_count,
        doc="Client connections of its ListenPort proxied at once, at most; more wait in turn.",
        fills=_SERVICE.max_connections,
    )
    RESOURCE_REQUIREMENTS = Key(
        "ResourceRequirements",
        _requirements,
        doc="Resource name to the amount the service uses while it runs.",
        fills=_SERVICE.resource_requirements,
    )

    @classmethod
    def check(cls, fields: Fields, at: At) -> None:
        """The rules between keys of one service."""
        openai = fields.get(cls.OPENAI_API, False)
        # A bad OpenAiApi is reported already: do not guess what it meant.
        openai_unknown = cls.OPENAI_API in fields.bad
        if not (fields.given(cls.LISTEN_PORT) or openai or openai_unknown):
            at.key(cls.LISTEN_PORT.name).problem(
                f"missing: a service needs a {cls.LISTEN_PORT.name},"
                f" or {cls.OPENAI_API.name}: true, or both"
            )
        if cls.OPENAI_API_MODELS in fields.values and not (openai or openai_unknown):
            at.key(cls.OPENAI_API_MODELS.name).problem(
                f"given, but {cls.OPENAI_API.name} is not true"
            )
        if cls.HEALTHCHECK_INTERVAL in fields.values and not fields.given(cls.HEALTHCHECK_COMMAND):
            at.key(cls.HEALTHCHECK_INTERVAL.name).problem(
                f"given, but there is no {cls.HEALTHCHECK_COMMAND.name}"
            )
        for only in _OPENAI_ONLY:
            if only in fields.values and not (openai or openai_unknown):
                at.key(only.name).problem(
                    f"given, but {cls.OPENAI_API.name} is not true: it is for the OpenAI port"
                )
        if cls.MAX_CONNECTIONS in fields.values and not fields.given(cls.LISTEN_PORT):
            at.key(cls.MAX_CONNECTIONS.name).problem(
                f"given, but there is no {cls.LISTEN_PORT.name}: it limits the service's TCP port"
            )
        if cls.MAX_QUEUED_REQUESTS in fields.values and not fields.given(
            cls.MAX_CONCURRENT_REQUESTS
        ):
            at.key(cls.MAX_QUEUED_REQUESTS.name).problem(
                f"given, but there is no {cls.MAX_CONCURRENT_REQUESTS.name}"
            )


_OPENAI_ONLY = (
    ServiceKeys.MAX_CONCURRENT_REQUESTS,
    ServiceKeys.MAX_QUEUED_REQUESTS,
    ServiceKeys.ALIASES,
    ServiceKeys.USE_MODEL_NAME,
    ServiceKeys.UNLISTED,
    ServiceKeys.METADATA,
)
"""The keys of a service that only a service with OpenAiApi may have."""


@frozen(eq=False)
class Entry:
    """
    One element of C{Services}, checked on its own but not yet against the
    other services and the resources.

    @ivar at: its place, which starts the service's problem group.
    @ivar fields: its checked keys.
    """

    at: At
    fields: Fields


def _label(item: Any) -> str | None:
    """The name of a service, found before anything is checked: it goes into every path."""
    if not isinstance(item, JsonObject):
        return None
    wanted = ServiceKeys.NAME.name.casefold()
    names = [value for key, value in item if key.casefold() == wanted]
    return characters(names[0]) if names and isinstance(names[0], str) else None


def check_services(value: Any, at: At) -> list[Entry]:
    """
    The converter of C{Services}.

    @return: the elements that are objects (the others are reported).
    """
    if not isinstance(value, list) or isinstance(value, JsonObject):
        raise Invalid(f"expected a list of services, got {show(value)}")
    entries = []
    for index, item in enumerate(value):
        item_at = at.service(index, _label(item))
        try:
            fields = check_object(item, item_at, ServiceKeys)
        except Invalid as e:
            item_at.problem(str(e))
            continue
        entries.append(Entry(item_at, fields))
    return entries


class TopLevelKeys(Section):
    """The keys of the config's top-level object."""

    # No fills for Services and ResourcesAvailable: build builds their objects.
    SERVICES = Key(
        "Services",
        check_services,
        doc="The list of services (it may be empty).",
        missing="missing (required): the list of services",
    )
    RESOURCES_AVAILABLE = Key(
        "ResourcesAvailable",
        check_resources,
        doc="Resource name to an amount, or to an object of ResourceKeys.",
    )
    LISTEN_ADDRESS = Key(
        "ListenAddress",
        ip_address,
        doc="The IP address every port listens on unless it has its own.",
        fallback=DEFAULT_LISTEN_ADDRESS,
    )
    OPENAI_API = nested_object("OpenAiApi", OpenAiApiKeys, doc="The OpenAI-compatible API.")
    MANAGEMENT_API = nested_object(
        "ManagementApi", ManagementApiKeys, doc="The management API and dashboard."
    )
    DEFAULT_SERVICE_URL = Key(
        "DefaultServiceUrl",
        template,
        doc="The dashboard link of services without a ServiceUrl; {{.PORT}} is their ListenPort.",
        fills=_CONFIG.default_service_url,
    )
    SHUT_DOWN_AFTER_INACTIVITY = Key(
        "ShutDownAfterInactivitySeconds",
        idle_seconds,
        doc="Stop a service after this long without connections; -1: never.",
        # What a service without its own gets: the model's default.
        fallback=_SERVICE.idle_timeout.default,
    )
    MAX_WAIT = Key(
        "MaxTimeToWaitForServiceToCloseConnectionBeforeGivingUpSeconds",
        seconds,
        doc="How long a client may wait for resources to be freed.",
        fills=_CONFIG.max_wait,
    )
    CLIENT_REQUEST_BUFFER_LIMIT = Key(
        "ClientRequestBufferLimitBytes",
        count,
        doc="What a waiting client may send before lmproxy stops reading it; 0: no limit.",
        fills=_CONFIG.client_buffer_limit,
    )
    OUTPUT_SERVICE_LOGS = Key(
        "OutputServiceLogs",
        boolean,
        doc="Also copy service output into lmproxy's own log.",
        fills=_CONFIG.output_service_logs,
    )
    LOG_LEVEL = Key("LogLevel", log_level, doc="Normal or Debug.", fills=_CONFIG.log_level)
