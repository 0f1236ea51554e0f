"""
lmproxy's configuration: parse a JSONC file, validate it, and turn it into
frozen objects with every default filled in.

Pure: no reactor and no I/O but reading the file.  Keys match
case-insensitively; every problem is collected and reported at once, each
naming where it is (``Services[2] ("Gemma-27B").ResourceRequirements: ...``).

Use L{load_config} (find and read the file) or L{parse_config} (text).

How it works: json5 parses the text, keeping each object as its list of
(key, value) pairs so repeated keys can be seen.  L{_fields} checks one object
against a schema (canonical key -> converter); converters check and convert
one value each.  Then the checks that involve several keys or services run,
and L{_service} fills in the defaults.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import json5
from attrs import define, field, frozen

DEFAULT_IDLE_TIMEOUT_SECONDS = 120.0
DEFAULT_MAX_WAIT_SECONDS = 120.0
DEFAULT_CLIENT_BUFFER_LIMIT = 16 * 1024 * 1024
DEFAULT_OPENAI_MAX_BODY_BYTES = 64 * 1024 * 1024  # audio uploads run to 25 MB
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
    openai_max_body_bytes: int = DEFAULT_OPENAI_MAX_BODY_BYTES  # larger requests get 413
    management_listen_port: int | None = None
    max_wait: float = DEFAULT_MAX_WAIT_SECONDS  # seconds a client may wait for resources
    client_buffer_limit: int = DEFAULT_CLIENT_BUFFER_LIMIT  # bytes, 0 = unbounded
    output_service_logs: bool = True
    log_level: str = "Normal"  # "Normal" or "Debug"
    default_service_url: str | None = None  # the raw template


# --- Public API --------------------------------------------------------------


def load_config(path: str | None, cwd: str) -> Config:
    """
    Read and parse a config file.

    @param path: the file to read, relative to ``cwd``; None looks for
        ``<cwd>/config.json``, then ``<cwd>/config.jsonc``.
    @param cwd: lmproxy's working directory.
    @raise ConfigError: no file, an unreadable file, or a bad config.
    """
    if path is None:
        candidates = [os.path.join(cwd, name) for name in ("config.json", "config.jsonc")]
        path = next((c for c in candidates if os.path.exists(c)), None)
        if path is None:
            raise ConfigError(
                [
                    f"no config file: neither {candidates[0]} nor {candidates[1]} exists"
                    " (give one with -c PATH)"
                ]
            )
    try:
        with open(os.path.join(cwd, path), encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read it: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text (bad byte at offset {e.start})"]) from None
    return parse_config(text, path, cwd)


def parse_config(text: str, source: str, cwd: str) -> Config:
    """
    Parse and validate the JSONC text of a config.

    @param source: the file name, for messages.
    @param cwd: lmproxy's working directory: relative paths in the config are
        made absolute against it.
    @raise ConfigError: listing every problem found.
    """
    document = _parse_jsonc(text, source)
    if not isinstance(document, _Object):
        raise ConfigError([f"{source}: the top level must be an object, got {_show(document)}"])
    at = _At("", [])
    config = _build(_fields(document, at, _TOP_LEVEL), at, cwd)
    if at.problems or config is None:
        # Stable sort: each service's problems together, in file order.
        raise ConfigError([message for _, message in sorted(at.problems, key=lambda p: p[0])])
    return config


# --- Parsing and reporting ---------------------------------------------------

# json5 reports syntax errors as "<string>:LINE MESSAGE at column COLUMN".
_JSON5_ERROR = re.compile(r"<string>:(?P<line>\d+) (?P<what>.*) at column (?P<column>\d+)$", re.S)


class _Object(list[tuple[str, Any]]):
    """A JSON object as parsed: its (key, value) pairs in file order, duplicates kept."""


def _parse_jsonc(text: str, source: str) -> Any:
    """Parse JSONC (JSON5, a superset) keeping objects as L{_Object}s."""
    if not text.strip():
        raise ConfigError([f"{source}: the file is empty"])
    try:
        return json5.loads(text, object_pairs_hook=_Object)
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply"]) from None
    except ValueError as e:
        match = _JSON5_ERROR.match(str(e))
        if match is None:
            raise ConfigError([f"{source}: syntax error: {e}"]) from None
        what = match["what"][:1].lower() + match["what"][1:]
        char = re.fullmatch('unexpected "(.)"', what, re.S)
        if char:  # json5 quotes the character as is: a newline, or '"""'
            what = f"unexpected {_show(char[1])}"
        where = f"line {match['line']}, column {match['column']}"
        raise ConfigError([f"{source}: {where}: syntax error: {what}"]) from None


def _show(value: Any) -> str:
    """A short JSON-ish rendering of a config value, for messages."""
    if isinstance(value, _Object):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:56] + '..."'


def _quote(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)


@frozen(eq=False)
class _At:
    """
    Where a value is in the config, and the list its problems go to.

    ``group`` orders the problems: 0 for anything outside Services, then one
    group per service, so that each service's problems are listed together.
    """

    path: str
    problems: list[tuple[int, str]]
    group: int = 0

    def _at(self, path: str, group: int | None = None) -> _At:
        return _At(path, self.problems, self.group if group is None else group)

    def key(self, key: str) -> _At:
        return self._at(f"{self.path}.{key}" if self.path else key)

    def index(self, index: int) -> _At:
        return self._at(f"{self.path}[{index}]")

    def service(self, index: int, name: str | None) -> _At:
        """Services[index], labelled with the service's name when it has one."""
        label = f" ({_quote(name)})" if name else ""
        return self._at(f"{self.path}[{index}]{label}", group=index + 1)

    def name(self, name: str) -> _At:
        """A map entry whose key is a name chosen by the user (a resource)."""
        return self._at(f"{self.path}[{_quote(name)}]")

    def problem(self, message: str) -> None:
        self.problems.append((self.group, f"{self.path or 'top level'}: {message}"))


class _Invalid(Exception):
    """Raised by a converter: the value is bad; the caller reports it at the value's path."""


# A converter checks one value and returns it converted, or _UNSET when the
# value means "not set" ("" for a string, 0 for a duration, [] for a list).
# It raises _Invalid for a bad value, and reports problems deeper inside
# (list items, nested keys) itself through the _At it is given.
_Convert = Callable[[Any, _At], Any]
_UNSET: Any = object()


@define
class _Fields:
    """The known keys of one config object: good values by key, and keys whose value was bad."""

    values: dict[str, Any] = field(factory=dict)
    bad: set[str] = field(factory=set)

    def given(self, key: str) -> bool:
        return key in self.values or key in self.bad


def _fields(
    value: Any, at: _At, schema: Mapping[str, _Convert], nullable: Iterable[str] = ()
) -> _Fields:
    """
    Check a config object against ``schema`` (canonical key -> converter).

    Keys match case-insensitively.  ``null`` means "not set", except for the
    keys in ``nullable``, which keep it as None.
    """
    if not isinstance(value, _Object):
        raise _Invalid(f"expected an object, got {_show(value)}")
    canonical = {key.casefold(): key for key in schema}
    spelled: dict[str, str] = {}
    result = _Fields()
    for given, item in value:
        key = canonical.get(given.casefold())
        if key is None:
            close = difflib.get_close_matches(given.casefold(), canonical, n=1)
            hint = f' (did you mean "{canonical[close[0]]}"?)' if close else ""
            at.key(given).problem(f"unknown key{hint}")
            continue
        if key in spelled:
            first = spelled[key]
            spellings = "" if given == first else f' (as "{first}" and "{given}": keys ignore case)'
            at.key(key).problem(f"given twice{spellings}")
            continue
        spelled[key] = given
        if item is None:
            if key in nullable:
                result.values[key] = None
            continue
        try:
            converted = schema[key](item, at.key(key))
        except _Invalid as e:
            at.key(key).problem(str(e))
            result.bad.add(key)
            continue
        if converted is not _UNSET:
            result.values[key] = converted
    return result


def _object(schema: Mapping[str, _Convert]) -> _Convert:
    """A converter for a nested object with fixed keys."""
    return lambda value, at: _fields(value, at, schema)


def _named(value: Any, at: _At, convert: _Convert) -> dict[str, Any]:
    """
    Check a map whose keys are names chosen by the user (case-sensitive).

    @return: name -> converted value, or None when that value was bad.
    """
    if not isinstance(value, _Object):
        raise _Invalid(f"expected an object, got {_show(value)}")
    result: dict[str, Any] = {}
    for name, item in value:
        if name in result:
            at.problem(f"{_quote(name)} is given twice")
            continue
        try:
            result[name] = convert(item, at.name(name))
        except _Invalid as e:
            at.name(name).problem(str(e))
            result[name] = None
    return result


# --- Converters ----------------------------------------------------------------


def _string(value: Any, at: _At) -> Any:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_show(value)}")
    return value or _UNSET


def _bool(value: Any, at: _At) -> Any:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _is_int(value: Any) -> bool:
    # bool is a subclass of int; JSON's true is not a number.
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any, at: _At) -> Any:
    """A non-negative integer: an amount of a resource, a number of bytes."""
    if not (_is_int(value) and value >= 0):
        raise _Invalid(f"expected a non-negative integer, got {_show(value)}")
    return value


def _port(value: Any, at: _At) -> Any:
    """A TCP port: a string of digits as upstream writes them, or an integer."""
    if value == "":
        return _UNSET
    if isinstance(value, str) and re.fullmatch("[0-9]+", value):
        number = int(value)
    elif _is_int(value):
        number = value
    else:
        number = 0
    if not 1 <= number <= 65535:
        raise _Invalid(f"{_show(value)} is not a port number (1-65535)")
    return number


def _duration(unit: str, seconds_per_unit: float) -> _Convert:
    """A converter for a duration written in ``unit``, giving float seconds; 0 means default."""

    def convert(value: Any, at: _At) -> Any:
        seconds = -1.0
        if isinstance(value, int | float) and not isinstance(value, bool):
            with contextlib.suppress(OverflowError):  # an integer too large for a float
                seconds = float(value) * seconds_per_unit
        if not 0 <= seconds < math.inf:
            raise _Invalid(f"expected a non-negative number of {unit}, got {_show(value)}")
        return seconds or _UNSET

    return convert


_seconds = _duration("seconds", 1.0)
_milliseconds = _duration("milliseconds", 0.001)

_LOG_LEVELS = {"normal": "Normal", "debug": "Debug"}


def _log_level(value: Any, at: _At) -> Any:
    text = _string(value, at)
    if text is _UNSET:
        return text
    if text.casefold() not in _LOG_LEVELS:
        raise _Invalid(f'expected "Normal" or "Debug", got {_show(value)}')
    return _LOG_LEVELS[text.casefold()]


def _model_ids(value: Any, at: _At) -> Any:
    """A list of OpenAI model ids; a repeated id counts once."""
    if not isinstance(value, list) or isinstance(value, _Object):
        raise _Invalid(f"expected a list of model ids, got {_show(value)}")
    ids: dict[str, None] = {}
    for index, item in enumerate(value):
        if isinstance(item, str) and item:
            ids[item] = None
        else:
            at.index(index).problem(f"expected a non-empty string, got {_show(item)}")
    return tuple(ids) or _UNSET


# Go-template actions, {{...}}; the only one lmproxy knows is {{.PORT}}.
_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)


def _template(value: Any, at: _At) -> Any:
    """A service URL template: text where {{.PORT}} stands for the ListenPort."""
    text = _string(value, at)
    if text is _UNSET:
        return text
    for action in _ACTION.finditer(text):
        if action[1].strip() != ".PORT":
            raise _Invalid(
                f"unsupported template action {_show(action[0])}:"
                " the only variable is {{.PORT}}"
            )
    outside = _ACTION.sub("", text)
    if "{{" in outside or "}}" in outside:
        raise _Invalid(f'unbalanced "{{{{" or "}}}}" in template {_show(text)}')
    return text


def _render(template: str | None, port: int | None) -> str | None:
    """Fill in {{.PORT}}; None when there is no template, or it needs a port there is not."""
    if template is None or _ACTION.search(template) is None:
        return template
    return None if port is None else _ACTION.sub(str(port), template)


_RESOURCE: dict[str, _Convert] = {
    "Amount": _count,
    "CheckCommand": _string,
    "CheckWhenNotEnoughIntervalMilliseconds": _milliseconds,
}


def _resource(value: Any, at: _At) -> Any:
    """One ResourcesAvailable value: an amount, or an object. Gives a _Fields."""
    if _is_int(value):
        return _Fields({"Amount": _count(value, at)})
    if not isinstance(value, _Object):
        raise _Invalid(
            "expected a non-negative integer, or an object with Amount and/or CheckCommand,"
            f" got {_show(value)}"
        )
    fields = _fields(value, at, _RESOURCE)
    if not (fields.given("Amount") or fields.given("CheckCommand")):
        at.problem("needs an Amount, a CheckCommand, or both")
    return fields


def _resources(value: Any, at: _At) -> Any:
    """ResourcesAvailable: name -> ResourceConfig, or None when that entry is bad."""
    resources: dict[str, ResourceConfig | None] = {}
    for name, fields in _named(value, at, _resource).items():
        if fields is None or fields.bad:
            resources[name] = None
            continue
        amount = fields.values.get("Amount")
        check = fields.values.get("CheckCommand")
        if amount == 0 and check is not None:
            amount = None  # struct dumps write "Amount": 0 for a measured-only resource
        interval = fields.values.get("CheckWhenNotEnoughIntervalMilliseconds")
        resources[name] = ResourceConfig(
            name, amount, check, interval or DEFAULT_CHECK_INTERVAL_SECONDS
        )
    return resources


def _requirements(value: Any, at: _At) -> Any:
    """ResourceRequirements: resource name -> amount (bad entries left out)."""
    amounts = _named(value, at, _count)
    return {name: amount for name, amount in amounts.items() if amount is not None}


_SERVICE: dict[str, _Convert] = {
    "Name": _string,
    "ListenPort": _port,
    "ProxyTargetHost": _string,
    "ProxyTargetPort": _port,
    "TargetPort": _port,  # an alias of ProxyTargetPort: the spec's own example uses it
    "Command": _string,
    "Args": _string,
    "WorkDir": _string,
    "LogFilePath": _string,
    "HealthcheckCommand": _string,
    "HealthcheckIntervalMilliseconds": _milliseconds,
    "StartupTimeoutMilliseconds": _milliseconds,
    "ShutDownAfterInactivitySeconds": _seconds,
    "RestartOnConnectionFailure": _bool,
    "KillCommand": _string,
    "ConsiderStoppedOnProcessExit": _bool,
    "OpenAiApi": _bool,
    "OpenAiApiModels": _model_ids,
    "ServiceUrl": _template,
    "ResourceRequirements": _requirements,
}


@frozen(eq=False)
class _Entry:
    """One element of Services, checked key by key but not yet against the others."""

    at: _At
    fields: _Fields


def _services(value: Any, at: _At) -> Any:
    """Services: a list of _Entry (elements that are not objects are reported and left out)."""
    if not isinstance(value, list) or isinstance(value, _Object):
        raise _Invalid(f"expected a list of services, got {_show(value)}")
    entries = []
    for index, item in enumerate(value):
        # The name goes into every path, so find it before checking anything.
        names = [v for k, v in item if k.casefold() == "name"] if isinstance(item, _Object) else []
        label = names[0] if names and isinstance(names[0], str) else None
        item_at = at.service(index, label)
        try:
            fields = _fields(item, item_at, _SERVICE, nullable=("ServiceUrl",))
        except _Invalid as e:
            item_at.problem(str(e))
            continue
        entries.append(_Entry(item_at, fields))
    return entries


_API = _object({"ListenPort": _port})
_OPENAI_API = _object({"ListenPort": _port, "MaxRequestBodyBytes": _count})

_TOP_LEVEL: dict[str, _Convert] = {
    "Services": _services,
    "ResourcesAvailable": _resources,
    "OpenAiApi": _OPENAI_API,
    "ManagementApi": _API,
    "DefaultServiceUrl": _template,
    "ShutDownAfterInactivitySeconds": _seconds,
    "MaxTimeToWaitForServiceToCloseConnectionBeforeGivingUpSeconds": _seconds,
    "ClientRequestBufferLimitBytes": _count,
    "OutputServiceLogs": _bool,
    "LogLevel": _log_level,
}


# --- Whole-config checks and building ----------------------------------------


def _build(top: _Fields, at: _At, cwd: str) -> Config | None:
    """Check what involves several keys; return the Config, or None if anything is wrong."""
    top_values = top.values
    if not top.given("Services"):
        at.key("Services").problem("missing (required): the list of services")
    entries: list[_Entry] = top_values.get("Services", [])
    # None: ResourcesAvailable itself is bad, so requirements cannot be checked.
    resources: dict[str, ResourceConfig | None] | None = top_values.get(
        "ResourcesAvailable", None if top.given("ResourcesAvailable") else {}
    )
    api_ports = {
        f"{key}.ListenPort": top_values[key].values["ListenPort"]
        for key in ("OpenAiApi", "ManagementApi")
        if key in top_values and "ListenPort" in top_values[key].values
    }
    for entry in entries:
        _check_service(entry, resources)
    _check_unique(entries, api_ports, at)
    if at.problems:
        return None
    idle = top_values.get("ShutDownAfterInactivitySeconds", DEFAULT_IDLE_TIMEOUT_SECONDS)
    default_url = top_values.get("DefaultServiceUrl")
    return Config(
        services=tuple(_service(e.fields.values, cwd, idle, default_url) for e in entries),
        resources=tuple(r for r in (resources or {}).values() if r is not None),
        openai_listen_port=api_ports.get("OpenAiApi.ListenPort"),
        # 0, as tools that dump every field write it, means the default.
        openai_max_body_bytes=(
            top_values["OpenAiApi"].values.get("MaxRequestBodyBytes")
            if "OpenAiApi" in top_values
            else None
        )
        or DEFAULT_OPENAI_MAX_BODY_BYTES,
        management_listen_port=api_ports.get("ManagementApi.ListenPort"),
        max_wait=top_values.get(
            "MaxTimeToWaitForServiceToCloseConnectionBeforeGivingUpSeconds",
            DEFAULT_MAX_WAIT_SECONDS,
        ),
        client_buffer_limit=top_values.get(
            "ClientRequestBufferLimitBytes", DEFAULT_CLIENT_BUFFER_LIMIT
        ),
        output_service_logs=top_values.get("OutputServiceLogs", True),
        log_level=top_values.get("LogLevel", "Normal"),
        default_service_url=default_url,
    )


def _check_service(entry: _Entry, resources: Mapping[str, ResourceConfig | None] | None) -> None:
    """The checks of one service that involve several of its keys, or ResourcesAvailable."""
    fields, values, at = entry.fields, entry.fields.values, entry.at
    for key in ("Name", "Command"):
        if not fields.given(key):
            at.key(key).problem("missing or empty (required)")
    if fields.given("TargetPort") and fields.given("ProxyTargetPort"):
        at.key("TargetPort").problem("is another name for ProxyTargetPort: give only one of them")
    elif not (fields.given("ProxyTargetPort") or fields.given("TargetPort")):
        at.key("ProxyTargetPort").problem(
            "missing (required): the port the service itself listens on"
        )
    openai = values.get("OpenAiApi", False)
    if not (fields.given("ListenPort") or openai or "OpenAiApi" in fields.bad):
        at.key("ListenPort").problem(
            "missing: a service needs a ListenPort, or OpenAiApi: true, or both"
        )
    if "OpenAiApiModels" in values and not openai and "OpenAiApi" not in fields.bad:
        at.key("OpenAiApiModels").problem("given, but OpenAiApi is not true")
    if "HealthcheckIntervalMilliseconds" in values and not fields.given("HealthcheckCommand"):
        at.key("HealthcheckIntervalMilliseconds").problem(
            "given, but there is no HealthcheckCommand"
        )
    if resources is None:
        return
    where = at.key("ResourceRequirements")
    for name, amount in values.get("ResourceRequirements", {}).items():
        if name not in resources:
            where.problem(f"resource {_quote(name)} is not in ResourcesAvailable")
            continue
        resource = resources[name]
        if resource is not None and resource.amount is not None and amount > resource.amount:
            where.problem(
                f"needs {amount} of {_quote(name)}, but ResourcesAvailable has only"
                f" {resource.amount}: it could never start"
            )


def _check_unique(entries: list[_Entry], api_ports: dict[str, int], at: _At) -> None:
    """Service names, listening ports and OpenAI model ids must each have one owner."""

    def report(claims: Iterable[tuple[object, _At, str]], clash: str) -> None:
        owners: dict[object, str] = {}
        for claim, claim_at, owner in claims:
            if claim in owners:
                claim_at.problem(clash.format(claim=_show(claim), owner=owners[claim]))
            else:
                owners[claim] = owner

    report(
        (
            (e.fields.values["Name"], e.at.key("Name"), e.at.path)
            for e in entries
            if "Name" in e.fields.values
        ),
        "another service has this name: {owner}",
    )
    port_claims = [(port, at.key(where), where) for where, port in api_ports.items()]
    for e in entries:
        if "ListenPort" in e.fields.values:
            where = e.at.key("ListenPort")
            port_claims.append((e.fields.values["ListenPort"], where, where.path))
    report(port_claims, "port {claim} is also the port of {owner}")
    report(
        (
            (model, e.at.key("OpenAiApiModels"), e.at.path)
            for e in entries
            for model in _models(e.fields.values)
        ),
        "model {claim} is also served by {owner}",
    )


def _models(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The OpenAI model ids a service answers to: its OpenAiApiModels, else its Name."""
    if not values.get("OpenAiApi"):
        return ()
    return values.get("OpenAiApiModels") or ((values["Name"],) if "Name" in values else ())


def _service(
    values: Mapping[str, Any], cwd: str, idle: float, default_url: str | None
) -> ServiceConfig:
    """Build a checked service, filling in the defaults."""
    name = values["Name"]
    listen_port = values.get("ListenPort")
    log_file = values.get("LogFilePath", os.path.join("logs", f"{name}.log"))
    work_dir = values.get("WorkDir")
    return ServiceConfig(
        name=name,
        command=values["Command"],
        proxy_target_port=values.get("ProxyTargetPort", values.get("TargetPort")),
        listen_port=listen_port,
        proxy_target_host=values.get("ProxyTargetHost", "localhost"),
        args=values.get("Args", ""),
        work_dir=None if work_dir is None else os.path.normpath(os.path.join(cwd, work_dir)),
        log_file_path=os.path.normpath(os.path.join(cwd, log_file)),
        healthcheck_command=values.get("HealthcheckCommand"),
        healthcheck_interval=values.get(
            "HealthcheckIntervalMilliseconds", DEFAULT_HEALTHCHECK_INTERVAL_SECONDS
        ),
        startup_timeout=values.get("StartupTimeoutMilliseconds", DEFAULT_STARTUP_TIMEOUT_SECONDS),
        idle_timeout=values.get("ShutDownAfterInactivitySeconds", idle),
        restart_on_connection_failure=values.get("RestartOnConnectionFailure", False),
        kill_command=values.get("KillCommand"),
        consider_stopped_on_process_exit=values.get("ConsiderStoppedOnProcessExit", True),
        openai_api=values.get("OpenAiApi", False),
        openai_api_models=_models(values),
        # ServiceUrl: null is kept as None by _fields and means "no URL".
        service_url=_render(values.get("ServiceUrl", default_url), listen_port),
        resource_requirements=values.get("ResourceRequirements", {}),
    )
