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
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from lmproxy.config.model import is_tcp_port
from lmproxy.config.problems import At, quote

# A UTF-16 surrogate pair, as JSON writes a character beyond U+FFFF ("\ud83d\ude00").
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def characters(value: str) -> str:
    """
    Join the UTF-16 surrogate pairs that json5 leaves as two halves.

    @param value: a string as parsed.
    @return: the string as written: C{"\\ud83d\\ude00"} is one character.
        Lone halves are left for L{text} to refuse.
    """
    return _SURROGATE_PAIR.sub(
        lambda m: m[0].encode("utf-16-le", "surrogatepass").decode("utf-16-le"), value
    )


class JsonObject(list[tuple[str, Any]]):
    """
    A JSON object as parsed: its (key, value) pairs in file order, each key
    as written (see L{characters}).

    Duplicates are kept, so that a key given twice can be reported.
    """

    def __init__(self, pairs: Iterable[tuple[str, Any]] = ()) -> None:
        """
        @param pairs: the (key, value) pairs, as json5 parsed them.
        """
        super().__init__((characters(key), value) for key, value in pairs)


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
    text = quote(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:56] + '..."'


def is_int(value: Any) -> bool:
    """
    @return: whether C{value} is a JSON integer.
    """
    # bool is a subclass of int; JSON's true is not a number.
    return isinstance(value, int) and not isinstance(value, bool)


# No program, path or shell command can take a NUL (the system calls take C
# strings: Python raises when asked), nor a lone UTF-16 surrogate (JSON's
# "\ud800"), which is no character and cannot be encoded for the system.
_UNUSABLE = re.compile("[\x00\ud800-\udfff]")

# What a name may not hold: it is shown on one line in logs, the dashboard
# and URLs (C0 and C1 controls, DEL, the line and paragraph separators).
_NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _usable_string(value: Any, taker: str) -> str:
    """
    C{value}, a string without NUL or lone surrogates, else L{Invalid}.

    @param taker: what could not take such a character, for the message.
    """
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {show(value)}")
    value = characters(value)
    bad = _UNUSABLE.search(value)
    if bad is not None:
        raise Invalid(f"contains {show(bad[0])} at character {bad.start()}: {taker}")
    return value


def text(value: Any, at: At) -> Any:
    """A string without NUL or lone surrogates; C{""} is not set."""
    return _usable_string(value, "no program, path or command can take it") or UNSET


def display_name(value: Any, at: At) -> Any:
    """A name (of a service, a model): L{text} on one line, without control characters."""
    given = text(value, at)
    bad = None if given is UNSET else _NOT_IN_NAMES.search(given)
    if bad is not None:
        raise Invalid(
            f"contains the control character {show(bad[0])} at character {bad.start()}:"
            " a name is shown in logs, the dashboard and URLs"
        )
    return given


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


def positive_count(value: Any, at: At) -> Any:
    """A positive integer: a number of requests at once."""
    if not (is_int(value) and value >= 1):
        raise Invalid(f"expected a positive integer, got {show(value)}")
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
        try:
            if not (isinstance(item, str) and item):
                raise Invalid(f"expected a non-empty string, got {show(item)}")
            ids[display_name(item, at)] = None
        except Invalid as e:
            at.index(index).problem(str(e))
    return tuple(ids) or UNSET


def json_object(value: Any, at: At) -> Any:
    """Any JSON object, as a C{dict} (its objects too); a key given twice is a problem."""
    if not isinstance(value, JsonObject):
        raise Invalid(f"expected an object, got {show(value)}")
    return _plain(value, at)


def _plain(value: Any, at: At) -> Any:
    """A parsed JSON value with its objects as C{dict}s, its lists as lists."""
    if isinstance(value, JsonObject):
        plain: dict[str, Any] = {}
        for key, item in value:
            if key in plain:
                at.key(key).problem("given twice")
            plain[key] = _plain(item, at.key(key))
        return plain
    if isinstance(value, list):
        return [_plain(item, at.index(index)) for index, item in enumerate(value)]
    return value


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


# In a default log file name: what would leave the logs folder or hide the
# file (separators, leading dots), or not show on one line.
_UNSAFE_IN_FILE_NAME = re.compile(r"^\.+|[/\\]|" + _NOT_IN_NAMES.pattern)
# Most file systems take names of up to 255 bytes; room for ".log" and a hash.
_MAX_FILE_NAME_BYTES = 200


def log_file_name(name: str) -> str:
    """
    The default log file name of a service: one file name, in the logs
    folder, that still reads as the service's name.

    @param name: the service's name, checked by L{display_name}.
    @return: e.g. C{Qwen_Qwen2.5-7B.log} for C{Qwen/Qwen2.5-7B}, and
        C{___etc_passwd.log} for C{../etc/passwd}; a name too long for a file
        name is cut, and a hash of it is added so that it stays its own.
    """
    safe = _UNSAFE_IN_FILE_NAME.sub(lambda m: "_" * len(m[0]), name)
    encoded = safe.encode()
    if len(encoded) > _MAX_FILE_NAME_BYTES:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        cut = encoded[:_MAX_FILE_NAME_BYTES].decode("utf-8", "ignore")
        safe = f"{cut}-{digest}"
    return f"{safe}.log"


NEVER = -1
"""The C{ShutDownAfterInactivitySeconds} that means "never stopped for being idle"."""


def idle_seconds(value: Any, at: At) -> Any:
    """
    L{seconds}, or C{-1}: never (converted to C{None}); 0 is not set, as
    large-model-proxy reads it (the default applies).
    """
    if is_int(value) and value == NEVER:
        return None
    try:
        return seconds(value, at)
    except Invalid:
        raise Invalid(
            f"expected {NEVER} (never) or a non-negative number of seconds, got {show(value)}"
        ) from None


RESERVED_VARIABLE = "LMPROXY_MARK"
"""The variable lmproxy puts in each service's environment itself (L{lmproxy.core.descendants})."""


def _variable_value(value: Any, at: At) -> Any:
    return _usable_string(value, "no variable holds it")


def environment(value: Any, at: At) -> Any:
    """
    C{Env}: a map of environment variable names to strings, as a dict; C{{}}
    is not set.  A name may not be empty, nor hold C{=} or NUL, nor be
    L{RESERVED_VARIABLE}; a value may be C{""} but may not hold NUL.
    """
    if not isinstance(value, JsonObject):
        raise Invalid(f"expected an object of variable names to strings, got {show(value)}")
    variables: dict[str, str] = {}
    seen: set[str] = set()
    for name, item in value:
        where = at.name(name)
        if name in seen:
            at.problem(f"{quote(name)} is given twice")
            continue
        seen.add(name)
        if not name:
            where.problem("an empty variable name")
        elif "=" in name or _UNUSABLE.search(name):
            where.problem(f"the variable name {show(name)} holds '=' or NUL: no variable can")
        elif name == RESERVED_VARIABLE:
            where.problem(
                f"{RESERVED_VARIABLE} is lmproxy's own: it marks the service's processes"
                " so that none outlives lmproxy"
            )
        else:
            try:
                variables[name] = _variable_value(item, where)
            except Invalid as e:
                where.problem(str(e))
    return variables or UNSET
