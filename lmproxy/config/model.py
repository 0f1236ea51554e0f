"""
The configuration as the rest of lmproxy sees it: frozen objects with every
default filled in.

These classes are the model, nothing more: they do not know the JSON keys
(L{lmproxy.config.keys} maps each key to the attribute it fills) and they do
not check anything.  Code and tests may build them directly, e.g.
C{ServiceConfig(name="m", command="srv", proxy_target_port=9001, openai_api=True)};
the defaults here are the ones a config file gets for a key it leaves out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

DEFAULT_IDLE_TIMEOUT_SECONDS = 120.0
DEFAULT_MAX_WAIT_SECONDS = 120.0
DEFAULT_CLIENT_BUFFER_LIMIT = 16 * 1024 * 1024
DEFAULT_OPENAI_MAX_BODY_BYTES = 64 * 1024 * 1024  # audio uploads run to 25 MB
DEFAULT_HEALTHCHECK_INTERVAL_SECONDS = 0.1
DEFAULT_STARTUP_TIMEOUT_SECONDS = 600.0
DEFAULT_CHECK_INTERVAL_SECONDS = 1.0
DEFAULT_LISTEN_ADDRESS = "0.0.0.0"  # every IPv4 interface, as lmproxy always listened

# The values of Config.openai_loading_feedback (OpenAiApi.LoadingFeedback):
LOADING_FEEDBACK_OFF = "off"  # false: streams start with the model's own answer
LOADING_FEEDBACK_COMMENTS = "comments"  # SSE comments while the model starts
LOADING_FEEDBACK_PROGRESS = "progress"  # true: and progress text for chat completions


def is_tcp_port(number: int) -> bool:
    """Whether C{number} can be a TCP port (C{ProxyTargetPort} may not be: see its key)."""
    return 1 <= number <= 65535


@frozen
class Secret:
    """
    A value that must never be shown (an API key): its C{repr}, and so any
    log line or message that shows a config object, hides it.

    @ivar value: the secret itself.
    """

    value: str = field(repr=False)


@frozen
class ResourceConfig:
    """
    One entry of C{ResourcesAvailable}.

    @ivar name: the resource's name, as given (names are case-sensitive).
    @ivar amount: the total, or C{None} for a resource that is only measured
        by C{check_command}.
    @ivar check_command: a shell command that prints how much is free, or
        C{None}.
    @ivar check_interval: seconds between checks while there is not enough.
    """

    name: str
    amount: int | None
    check_command: str | None = None
    check_interval: float = DEFAULT_CHECK_INTERVAL_SECONDS


@frozen
class ServiceConfig:
    """
    One entry of C{Services}, with its defaults resolved.

    Durations are float seconds, whatever unit the config writes them in.

    @ivar args: the arguments as one string, split like a POSIX shell would at
        start time.
    @ivar work_dir: the working directory, or C{None} for lmproxy's own.
    @ivar log_file_path: absolute; the parser's default is
        C{<cwd>/logs/<name>.log}.
    @ivar idle_timeout: the service's own C{ShutDownAfterInactivitySeconds},
        else the global one; C{None}: never stopped for being idle (C{-1}).
    @ivar openai_api_models: the model ids served on the OpenAI port; the
        parser gives C{(name,)} to a service with C{OpenAiApi} and no list.
    @ivar aliases: more model ids served on the OpenAI port, not listed as
        entries of their own by C{/v1/models}.
    @ivar use_model_name: the model name that forwarded bodies carry
        instead of the id the client asked for, or C{None}.
    @ivar unlisted: served on the OpenAI port but not listed.
    @ivar metadata: a free-form object shown in its C{/v1/models} entries.
    @ivar service_url: the dashboard link, rendered (C{{{.PORT}}} replaced),
        or C{None} for no link.
    @ivar resource_requirements: resource name to the amount used while the
        service runs.
    @ivar listen_address: the IP address its C{listen_port} is bound to.
    @ivar max_connections: client connections of its C{listen_port} proxied
        at once, at most (C{MaxConnections}); C{None}: no limit.
    @ivar pinned: never evicted to make room for another service.
    @ivar start_on_launch: started when lmproxy starts, without a client.
    @ivar env: variables added to lmproxy's environment for its Command,
        HealthcheckCommand and KillCommand.
    """

    name: str
    command: str
    proxy_target_port: int
    listen_port: int | None = None
    proxy_target_host: str = "localhost"
    args: str = ""
    work_dir: str | None = None
    log_file_path: str = ""
    healthcheck_command: str | None = None
    healthcheck_interval: float = DEFAULT_HEALTHCHECK_INTERVAL_SECONDS
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_SECONDS
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_SECONDS
    restart_on_connection_failure: bool = False
    kill_command: str | None = None
    consider_stopped_on_process_exit: bool = True
    openai_api: bool = False
    openai_api_models: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    use_model_name: str | None = None
    unlisted: bool = False
    metadata: Mapping[str, Any] = field(factory=dict)
    service_url: str | None = None
    resource_requirements: Mapping[str, int] = field(factory=dict)
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    max_concurrent_requests: int | None = None
    max_queued_requests: int | None = None
    max_connections: int | None = None
    pinned: bool = False
    start_on_launch: bool = False
    env: Mapping[str, str] = field(factory=dict)


@frozen
class Config:
    """
    The whole configuration.

    @ivar openai_listen_port: the OpenAI API's port, or C{None}: no OpenAI API.
    @ivar openai_max_body_bytes: larger requests to the OpenAI port get 413.
    @ivar management_listen_port: the management API's port, or C{None}: off.
    @ivar max_wait: seconds a client may wait for resources.
    @ivar client_buffer_limit: bytes a waiting client may send before lmproxy
        stops reading it; 0 means no limit.
    @ivar log_level: C{"Normal"} or C{"Debug"}.
    @ivar default_service_url: the C{DefaultServiceUrl} template as written
        (each service's C{service_url} is already rendered).
    @ivar warnings: what loaded but deserves a line in the log, each starting
        with where it is in the file.
    @ivar openai_listen_address: the IP address of the OpenAI port.
    @ivar openai_api_keys: the keys a request to the OpenAI port must bring
        one of; none: no key needed.
    @ivar openai_allowed_origins: the C{Origin}s (C{scheme://host[:port]},
        lowercase) whose requests the OpenAI port serves; C{"*"} is any.
    @ivar openai_loading_feedback: what a stream for a model that has to
        start gets meanwhile: C{LOADING_FEEDBACK_OFF}, C{_COMMENTS} or C{_PROGRESS}.
    @ivar management_listen_address: the IP address of the management port.
    @ivar management_api_keys: like C{openai_api_keys}, for the management API.
    @ivar management_allowed_hosts: host names (lowercase, without port) that
        the management API answers to besides IP addresses and C{localhost}.
    """

    services: tuple[ServiceConfig, ...]
    resources: tuple[ResourceConfig, ...] = ()
    openai_listen_port: int | None = None
    openai_max_body_bytes: int = DEFAULT_OPENAI_MAX_BODY_BYTES
    management_listen_port: int | None = None
    max_wait: float = DEFAULT_MAX_WAIT_SECONDS
    client_buffer_limit: int = DEFAULT_CLIENT_BUFFER_LIMIT
    output_service_logs: bool = True
    log_level: str = "Normal"
    default_service_url: str | None = None
    warnings: tuple[str, ...] = ()
    openai_listen_address: str = DEFAULT_LISTEN_ADDRESS
    openai_api_keys: tuple[Secret, ...] = ()
    openai_allowed_origins: tuple[str, ...] = ()
    openai_loading_feedback: str = LOADING_FEEDBACK_OFF
    management_listen_address: str = DEFAULT_LISTEN_ADDRESS
    management_api_keys: tuple[Secret, ...] = ()
    management_allowed_hosts: tuple[str, ...] = ()
