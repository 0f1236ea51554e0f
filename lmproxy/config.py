"""
lmproxy's configuration: parse a JSONC file, validate it, and turn it into
frozen objects with every default filled in.

Pure: no reactor and no I/O but reading the file.  Keys match
case-insensitively; every problem is collected and reported at once, each
naming where it is (``Services[2] ("Gemma-27B").ResourceRequirements: ...``).
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import field, frozen

DEFAULT_IDLE_TIMEOUT_SECONDS = 120.0
DEFAULT_MAX_WAIT_SECONDS = 120.0
DEFAULT_CLIENT_BUFFER_LIMIT = 16 * 1024 * 1024
DEFAULT_HEALTHCHECK_INTERVAL_SECONDS = 0.1
DEFAULT_STARTUP_TIMEOUT_SECONDS = 600.0
DEFAULT_CHECK_INTERVAL_SECONDS = 1.0


class ConfigError(Exception):
    """The config cannot be used; ``problems`` lists every reason, each with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@frozen
class ResourceConfig:
    """One entry of ResourcesAvailable."""

    name: str
    amount: int | None  # None: only measured by check_command
    check_command: str | None = None
    check_interval: float = DEFAULT_CHECK_INTERVAL_SECONDS  # seconds


@frozen
class ServiceConfig:
    """One entry of Services, with defaults resolved."""

    name: str
    command: str
    proxy_target_port: int
    listen_port: int | None = None
    proxy_target_host: str = "localhost"
    args: str = ""  # split like a POSIX shell at start time
    work_dir: str | None = None  # None: lmproxy's working directory
    log_file_path: str = ""  # absolute; default <cwd>/logs/<Name>.log
    healthcheck_command: str | None = None
    healthcheck_interval: float = DEFAULT_HEALTHCHECK_INTERVAL_SECONDS  # seconds
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_SECONDS  # seconds
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_SECONDS  # seconds; service value, else global
    restart_on_connection_failure: bool = False
    kill_command: str | None = None
    consider_stopped_on_process_exit: bool = True
    openai_api: bool = False
    openai_api_models: tuple[str, ...] = ()  # resolved: (name,) when OpenAiApi and none given
    service_url: str | None = None  # rendered ({{.PORT}} replaced), None: no URL
    resource_requirements: Mapping[str, int] = field(factory=dict)


@frozen
class Config:
    """The whole configuration."""

    services: tuple[ServiceConfig, ...]
    resources: tuple[ResourceConfig, ...] = ()
    openai_listen_port: int | None = None
    management_listen_port: int | None = None
    max_wait: float = DEFAULT_MAX_WAIT_SECONDS  # seconds a client may wait for resources
    client_buffer_limit: int = DEFAULT_CLIENT_BUFFER_LIMIT  # bytes, 0 = unbounded
    output_service_logs: bool = True
    log_level: str = "Normal"  # "Normal" or "Debug"
    default_service_url: str | None = None  # the raw template
