"""
Converters: each checks one JSON value of the config and converts it.

A converter is called as C{convert(value, at)}.  It returns the converted
value, or L{UNSET} when the value means "not set" (C{""} for a string, 0 for
a duration, C{[]} for a list: tools that dump Go structs write those for
fields they do not use).  It raises L{Invalid} for a bad value, and reports
problems deeper inside the value (list items) itself, through the L{At} it is
given.

Converters know nothing about keys; L{lmproxy.config.keys} says which key
uses which.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

from lmproxy.config.model import is_tcp_port
from lmproxy.config.problems import At


class JsonObject(list[tuple[str, Any]]):
    """
    A JSON object as parsed: its (key, value) pairs in file order.

    Duplicates are kept, so that a key given twice can be reported.
    """


class Invalid(Exception):
    """
    Raised by a converter: the value is bad.

    The caller reports the message at the value's place.
    """


UNSET: Any = object()
"""Returned by a converter for a value that means "not set": the default applies."""

Convert = Callable[[Any, At], Any]
"""The type of a converter."""


def show(value: Any) -> str:
    """
    Render a config value for a message, shortly.

    @param value: a parsed JSON value.
    @return: C{"an object"}, C{"a list"}, or the value as JSON, cut to about
        60 characters.
    """
    if isinstance(value, JsonObject):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:56] + '..."'


def is_int(value: Any) -> bool:
    """
    @return: whether C{value} is a JSON integer.
    """
    # bool is a subclass of int; JSON's true is not a number.
    return isinstance(value, int) and not isinstance(value, bool)


def text(value: Any, at: At) -> Any:
    """A string; C{""} is not set."""
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {show(value)}")
    return value or UNSET


def boolean(value: Any, at: At) -> Any:
    """C{true} or C{false}."""
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {show(value)}")
    return value


def count(value: Any, at: At) -> Any:
    """A non-negative integer: an amount of a resource, a number of bytes."""
    if not (is_int(value) and value >= 0):
        raise Invalid(f"expected a non-negative integer, got {show(value)}")
    return value


def count_or_default(value: Any, at: At) -> Any:
    """Like L{count}, but 0 is not set: a dumped struct writes 0 where 0 makes no sense."""
    return count(value, at) or UNSET


def port(value: Any, at: At) -> Any:
    """A TCP port: a string of digits, as upstream writes them, or an integer; C{""} is not set."""
    number = _port_number(value)
    if number is UNSET:
        return UNSET
    if number is None or not is_tcp_port(number):
        raise Invalid(f"{show(value)} is not a port number (1-65535)")
    return number


def target_port(value: Any, at: At) -> Any:
    """
    Like L{port}, but an integer outside 1-65535 loads, with a warning, as
    large-model-proxy loads it: only the starts of that service fail.
    """
    number = _port_number(value)
    if number is None:
        raise Invalid(f"{show(value)} is not a port number (1-65535)")
    if number is not UNSET and not is_tcp_port(number):
        at.warning(f"{show(value)} is not a port number (1-65535): every start of it will fail")
    return number


def _port_number(value: Any) -> Any:
    """The integer a port value writes, L{UNSET} for C{""}, None when it writes none."""
    if value == "":
        return UNSET
    if isinstance(value, str) and re.fullmatch("-?[0-9]+", value):
        return int(value)
    return value if is_int(value) else None


def _duration(unit: str, seconds_per_unit: float) -> Convert:
    """
    @param unit: the unit the config writes the duration in, for messages.
    @param seconds_per_unit: how many seconds one C{unit} is.
    @return: a converter of a non-negative number of C{unit}s to float
        seconds, 0 being not set.
    """

    def convert(value: Any, at: At) -> Any:
        seconds = -1.0
        if isinstance(value, int | float) and not isinstance(value, bool):
            with contextlib.suppress(OverflowError):  # an integer too large for a float
                seconds = float(value) * seconds_per_unit
        if not 0 <= seconds < math.inf:
            raise Invalid(f"expected a non-negative number of {unit}, got {show(value)}")
        return seconds or UNSET

    return convert


seconds = _duration("seconds", 1.0)
milliseconds = _duration("milliseconds", 0.001)

_LOG_LEVELS = {"normal": "Normal", "debug": "Debug"}


def log_level(value: Any, at: At) -> Any:
    """C{"Normal"} or C{"Debug"}, in any case; gives the canonical spelling."""
    given = text(value, at)
    if given is UNSET:
        return given
    if given.casefold() not in _LOG_LEVELS:
        raise Invalid(f'expected "Normal" or "Debug", got {show(value)}')
    return _LOG_LEVELS[given.casefold()]


def model_ids(value: Any, at: At) -> Any:
    """A list of OpenAI model ids, as a tuple; a repeated id counts once, C{[]} is not set."""
    if not isinstance(value, list) or isinstance(value, JsonObject):
        raise Invalid(f"expected a list of model ids, got {show(value)}")
    ids: dict[str, None] = {}
    for index, item in enumerate(value):
        if isinstance(item, str) and item:
            ids[item] = None
        else:
            at.index(index).problem(f"expected a non-empty string, got {show(item)}")
    return tuple(ids) or UNSET


# Go-template actions, {{...}}; the only one lmproxy knows is {{.PORT}}.
_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)


def template(value: Any, at: At) -> Any:
    """A service URL template: text where C{{{.PORT}}} stands for the service's ListenPort."""
    given = text(value, at)
    if given is UNSET:
        return given
    for action in _ACTION.finditer(given):
        if action[1].strip() != ".PORT":
            raise Invalid(
                f"unsupported template action {show(action[0])}: the only variable is {{{{.PORT}}}}"
            )
    outside = _ACTION.sub("", given)
    if "{{" in outside or "}}" in outside:
        raise Invalid(f'unbalanced "{{{{" or "}}}}" in template {show(given)}')
    return given


def render(url: str | None, listen_port: int | None) -> str | None:
    """
    Fill in a URL template.

    @param url: a template checked by L{template}, or C{None}.
    @param listen_port: the service's ListenPort, or C{None}.
    @return: the URL, or C{None} when there is no template, or when it needs
        a port and there is none.
    """
    if url is None or _ACTION.search(url) is None:
        return url
    return None if listen_port is None else _ACTION.sub(str(listen_port), url)
