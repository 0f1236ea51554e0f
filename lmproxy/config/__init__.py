"""
lmproxy's configuration: the model (frozen classes with every default filled
in) and the parser that builds it from a JSONC file.
"""

from lmproxy.config.parse import (
    DEFAULT_CHECK_INTERVAL_SECONDS,
    DEFAULT_CLIENT_BUFFER_LIMIT,
    DEFAULT_HEALTHCHECK_INTERVAL_SECONDS,
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_MAX_WAIT_SECONDS,
    DEFAULT_OPENAI_MAX_BODY_BYTES,
    DEFAULT_STARTUP_TIMEOUT_SECONDS,
    Config,
    ConfigError,
    ResourceConfig,
    ServiceConfig,
    load_config,
    parse_config,
)

__all__ = [
    "DEFAULT_CHECK_INTERVAL_SECONDS",
    "DEFAULT_CLIENT_BUFFER_LIMIT",
    "DEFAULT_HEALTHCHECK_INTERVAL_SECONDS",
    "DEFAULT_IDLE_TIMEOUT_SECONDS",
    "DEFAULT_MAX_WAIT_SECONDS",
    "DEFAULT_OPENAI_MAX_BODY_BYTES",
    "DEFAULT_STARTUP_TIMEOUT_SECONDS",
    "Config",
    "ConfigError",
    "ResourceConfig",
    "ServiceConfig",
    "load_config",
    "parse_config",
]
