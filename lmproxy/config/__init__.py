"""
lmproxy's configuration: the model (frozen classes with every default filled
in) and the parser that builds it from a JSONC file.

  - L{lmproxy.config.model}: L{Config}, L{ServiceConfig}, L{ResourceConfig},
    L{Secret} and the C{DEFAULT_*} values.
  - L{lmproxy.config.keys}: every key, declared once (L{lmproxy.config.schema}
    says what a declaration is; L{lmproxy.config.apis} has the API objects').
  - L{lmproxy.config.parse}: L{load_config} and L{parse_config}, which read
    a file with the help of L{lmproxy.config.values} (one value at a time),
    L{lmproxy.config.access} (addresses, API keys, hosts and origins, and
    L{normalize_origin}), L{lmproxy.config.build} (rules across keys and objects) and
    L{lmproxy.config.problems} (where a problem is; L{ConfigError}).

Import from here: the modules are the package's own business.
"""

from lmproxy.config.access import normalize_origin
from lmproxy.config.model import (
    DEFAULT_CHECK_INTERVAL_SECONDS,
    DEFAULT_CLIENT_BUFFER_LIMIT,
    DEFAULT_HEALTHCHECK_INTERVAL_SECONDS,
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_LISTEN_ADDRESS,
    DEFAULT_MAX_WAIT_SECONDS,
    DEFAULT_OPENAI_MAX_BODY_BYTES,
    DEFAULT_STARTUP_TIMEOUT_SECONDS,
    LOADING_FEEDBACK_COMMENTS,
    LOADING_FEEDBACK_OFF,
    LOADING_FEEDBACK_PROGRESS,
    Config,
    ResourceConfig,
    Secret,
    ServiceConfig,
    is_tcp_port,
)
from lmproxy.config.parse import load_config, parse_config
from lmproxy.config.problems import ConfigError

__all__ = [
    "DEFAULT_CHECK_INTERVAL_SECONDS",
    "DEFAULT_CLIENT_BUFFER_LIMIT",
    "DEFAULT_HEALTHCHECK_INTERVAL_SECONDS",
    "DEFAULT_IDLE_TIMEOUT_SECONDS",
    "DEFAULT_LISTEN_ADDRESS",
    "DEFAULT_MAX_WAIT_SECONDS",
    "DEFAULT_OPENAI_MAX_BODY_BYTES",
    "DEFAULT_STARTUP_TIMEOUT_SECONDS",
    "LOADING_FEEDBACK_COMMENTS",
    "LOADING_FEEDBACK_OFF",
    "LOADING_FEEDBACK_PROGRESS",
    "Config",
    "ConfigError",
    "ResourceConfig",
    "Secret",
    "ServiceConfig",
    "is_tcp_port",
    "load_config",
    "normalize_origin",
    "parse_config",
]
