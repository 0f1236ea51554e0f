"""
The keys of the C{OpenAiApi} and C{ManagementApi} objects (see
L{lmproxy.config.keys}, which declares the others).
"""

from __future__ import annotations

from typing import Any

import attrs

from lmproxy.config.access import api_keys, host_names, ip_address, origins
from lmproxy.config.model import (
    LOADING_FEEDBACK_COMMENTS,
    LOADING_FEEDBACK_OFF,
    LOADING_FEEDBACK_PROGRESS,
    Config,
)
from lmproxy.config.problems import At
from lmproxy.config.schema import Key, Section
from lmproxy.config.values import Invalid, count_or_default, port, show

_CONFIG = attrs.fields(Config)


def loading_feedback(value: Any, at: At) -> Any:
    """C{false}, C{true} (comments and progress text) or C{"comments"} (comments only)."""
    if value is False:
        return LOADING_FEEDBACK_OFF
    if value is True:
        return LOADING_FEEDBACK_PROGRESS
    if value == LOADING_FEEDBACK_COMMENTS:
        return value
    raise Invalid(f'expected true, false or "comments", got {show(value)}')


class OpenAiApiKeys(Section):
    """The keys of the C{OpenAiApi} object."""

    LISTEN_PORT = Key(
        "ListenPort",
        port,
        doc="The port of the OpenAI-compatible API; absent or empty: off.",
        fills=_CONFIG.openai_listen_port,
    )
    MAX_REQUEST_BODY_BYTES = Key(
        "MaxRequestBodyBytes",
        count_or_default,
        doc="Larger requests to the OpenAI port are refused with 413.",
        fills=_CONFIG.openai_max_body_bytes,
    )
    # No fills for ListenAddress and ApiKeys: build falls back to the top-level
    # address, and reads the keys kept in files and variables.
    LISTEN_ADDRESS = Key(
        "ListenAddress",
        ip_address,
        doc="The IP address of the OpenAI port; default the top-level ListenAddress.",
    )
    API_KEYS = Key(
        "ApiKeys",
        api_keys,
        doc='Requests must bring one of these keys: strings, {"File": path} or {"Env": NAME}.',
    )
    CORS_ALLOWED_ORIGINS = Key(
        "CorsAllowedOrigins",
        origins,
        doc='The Origins whose browser requests are served ("*": any); others get 403.',
        fills=_CONFIG.openai_allowed_origins,
    )
    LOADING_FEEDBACK = Key(
        "LoadingFeedback",
        loading_feedback,
        doc="Streams for a model that starts get SSE comments meanwhile, and progress text.",
        fills=_CONFIG.openai_loading_feedback,
    )


class ManagementApiKeys(Section):
    """The keys of the C{ManagementApi} object."""

    LISTEN_PORT = Key(
        "ListenPort",
        port,
        doc="The port of the management API and dashboard; absent or empty: off.",
        fills=_CONFIG.management_listen_port,
    )
    LISTEN_ADDRESS = Key(
        "ListenAddress",
        ip_address,
        doc="The IP address of the management port; default the top-level ListenAddress.",
    )
    API_KEYS = Key(
        "ApiKeys",
        api_keys,
        doc="Like OpenAiApi.ApiKeys; the dashboard's own files stay public, it asks for the key.",
    )
    ALLOWED_HOSTS = Key(
        "AllowedHosts",
        host_names,
        doc="Host names it answers to besides IP addresses and localhost (against DNS rebinding).",
        fills=_CONFIG.management_allowed_hosts,
    )
