"""
From checked keys to the model: the checks that involve several objects (a
service and the resources, services among themselves), and the rules that
fill an attribute from more than one key.

The rules, each in one place below:
  - C{TargetPort} is another name for C{ProxyTargetPort}
    (L{ServiceKeys.TARGET_PORT}, through L{Section.arguments}).
  - A service without its own C{ShutDownAfterInactivitySeconds} gets the
    global one, else its default (L{_service}).
  - C{WorkDir} and C{LogFilePath} are made absolute against lmproxy's working
    directory; C{LogFilePath} defaults to C{logs/<Name>.log}, the name made
    one safe file name (L{_log_file}), which no other service may have
    (L{_check_log_files}).
  - A service with C{OpenAiApi} and no C{OpenAiApiModels} serves its C{Name}
    (L{_models}).
  - C{ServiceUrl} defaults to C{DefaultServiceUrl}; C{ServiceUrl: null} means
    no URL; either is rendered with the service's C{ListenPort}
    (L{_service}).
  - A resource with an C{Amount} of 0 and a C{CheckCommand} is measured only,
    as if it had no C{Amount} (L{_resource}).
  - A requirement larger than a static resource's C{Amount} is an error; with
    a C{CheckCommand} the measurement decides, so it is only a warning
    (L{_check_requirements}).
  - A port without its own C{ListenAddress} gets the top-level one, else
    every IPv4 interface; the C{ApiKeys} kept in files and variables are read;
    a management API beyond loopback without a key is a warning (L{_apis}).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from typing import Any

from lmproxy.config.access import read_keys
from lmproxy.config.keys import (
    Entry,
    ManagementApiKeys,
    OpenAiApiKeys,
    ResourceKeys,
    ServiceKeys,
    TopLevelKeys,
)
from lmproxy.config.model import Config, ResourceConfig, ServiceConfig
from lmproxy.config.problems import At, quote
from lmproxy.config.schema import Fields
from lmproxy.config.values import log_file_name, render, show

# The API objects and their port keys: each port is claimed like a service's ListenPort.
_API_PORTS = (
    (TopLevelKeys.OPENAI_API, OpenAiApiKeys.LISTEN_PORT),
    (TopLevelKeys.MANAGEMENT_API, ManagementApiKeys.LISTEN_PORT),
)


def build(top: Fields, at: At, cwd: str) -> Config | None:
    """
    Check what involves several objects, and build the model.

    @param top: the checked keys of the top-level object.
    @param at: the top level's place, where the problems go.
    @param cwd: lmproxy's working directory, for relative paths.
    @return: the config, or C{None} if any problem was found, here or before.
    """
    entries: list[Entry] = top.get(TopLevelKeys.SERVICES, [])
    resources = _resources(top)
    api_ports = {
        f"{api.name}.{key.name}": top.values[api].values[key]
        for api, key in _API_PORTS
        if api in top.values and key in top.values[api].values
    }
    for entry in entries:
        _check_requirements(entry, resources)
    _check_unique(entries, api_ports, at)
    _check_log_files(entries, cwd)
    address_key = TopLevelKeys.LISTEN_ADDRESS
    address = top.get(address_key, address_key.default)
    apis = _apis(top, at, cwd, address)
    if at.problems:
        return None
    idle_key = TopLevelKeys.SHUT_DOWN_AFTER_INACTIVITY
    idle = top.get(idle_key, idle_key.default)
    default_url = top.get(TopLevelKeys.DEFAULT_SERVICE_URL)
    return Config(
        warnings=tuple(at.warnings),
        services=tuple(_service(e.fields, cwd, idle, default_url, address) for e in entries),
        resources=tuple(r for r in (resources or {}).values() if r is not None),
        **TopLevelKeys.arguments(top),
        **OpenAiApiKeys.arguments(top.get(TopLevelKeys.OPENAI_API, Fields())),
        **ManagementApiKeys.arguments(top.get(TopLevelKeys.MANAGEMENT_API, Fields())),
        **apis,
    )


def _apis(top: Fields, at: At, cwd: str, address: str) -> dict[str, Any]:
    """
    The listen address and keys of each API, as L{Config} arguments.

    @param address: the top-level C{ListenAddress}, or its default.
    """
    openai = top.get(TopLevelKeys.OPENAI_API, Fields())
    management = top.get(TopLevelKeys.MANAGEMENT_API, Fields())
    arguments = {
        "openai_listen_address": openai.get(OpenAiApiKeys.LISTEN_ADDRESS, address),
        "openai_api_keys": read_keys(openai.get(OpenAiApiKeys.API_KEYS, []), cwd),
        "management_listen_address": management.get(ManagementApiKeys.LISTEN_ADDRESS, address),
        "management_api_keys": read_keys(management.get(ManagementApiKeys.API_KEYS, []), cwd),
    }
    where = arguments["management_listen_address"]
    if (
        ManagementApiKeys.LISTEN_PORT in management.values
        and not ipaddress.ip_address(where).is_loopback
        and not arguments["management_api_keys"]
    ):
        at.key(TopLevelKeys.MANAGEMENT_API.name).warning(
            f"listens on {where}, beyond this machine, without {ManagementApiKeys.API_KEYS.name}:"
            " whoever can reach its port can start and stop services; give it ApiKeys, or"
            f' {ManagementApiKeys.LISTEN_ADDRESS.name} "127.0.0.1"'
        )
    return arguments


def _resources(top: Fields) -> dict[str, ResourceConfig | None] | None:
    """
    @return: resource name to its config, or to C{None} when it has a problem;
        C{None} when C{ResourcesAvailable} itself is bad, so that no
        requirement can be checked.
    """
    key = TopLevelKeys.RESOURCES_AVAILABLE
    if key not in top.values:
        return None if top.given(key) else {}
    resources: dict[str, Fields | None] = top.values[key]
    return {
        name: None if fields is None else _resource(name, fields)
        for name, fields in resources.items()
    }


def _resource(name: str, fields: Fields) -> ResourceConfig:
    """Build one resource."""
    amount = fields.get(ResourceKeys.AMOUNT)
    if amount == 0 and fields.given(ResourceKeys.CHECK_COMMAND):
        amount = None  # struct dumps write "Amount": 0 for a measured-only resource
    return ResourceConfig(name=name, amount=amount, **ResourceKeys.arguments(fields))


def _check_requirements(
    entry: Entry, resources: Mapping[str, ResourceConfig | None] | None
) -> None:
    """
    A service may only require resources that exist, and no more than the
    whole C{Amount} of a static one.
    """
    if resources is None:
        return
    available = TopLevelKeys.RESOURCES_AVAILABLE.name
    where = entry.at.key(ServiceKeys.RESOURCE_REQUIREMENTS.name)
    for name, amount in entry.fields.get(ServiceKeys.RESOURCE_REQUIREMENTS, {}).items():
        if name not in resources:
            where.problem(f"resource {quote(name)} is not in {available}")
            continue
        resource = resources[name]
        if resource is None or resource.amount is None or amount <= resource.amount:
            continue
        if resource.check_command is None:
            where.problem(
                f"needs {amount} of {quote(name)}, but {available} has only"
                f" {resource.amount}: it could never start"
            )
        else:
            where.warning(
                f"needs {amount} of {quote(name)}, more than its Amount {resource.amount};"
                " its CheckCommand's measurement decides when it may start"
            )


def _check_unique(entries: list[Entry], api_ports: dict[str, int], at: At) -> None:
    """Service names, listening ports and OpenAI model ids must each have one owner."""

    def report(claims: Iterable[tuple[object, At, str]], clash: str) -> None:
        owners: dict[object, str] = {}
        for claim, claim_at, owner in claims:
            if claim in owners:
                claim_at.problem(clash.format(claim=show(claim), owner=owners[claim]))
            else:
                owners[claim] = owner

    name, listen_port, models = (
        ServiceKeys.NAME,
        ServiceKeys.LISTEN_PORT,
        ServiceKeys.OPENAI_API_MODELS,
    )
    report(
        (
            (e.fields.values[name], e.at.key(name.name), e.at.path)
            for e in entries
            if name in e.fields.values
        ),
        "another service has this name: {owner}",
    )
    port_claims = [(port, at.key(where), where) for where, port in api_ports.items()]
    for e in entries:
        if listen_port in e.fields.values:
            where = e.at.key(listen_port.name)
            port_claims.append((e.fields.values[listen_port], where, where.path))
    report(port_claims, "port {claim} is also the port of {owner}")
    model_claims: list[tuple[object, At, str]] = []
    for e in entries:
        model_claims.extend(
            (model, e.at.key(models.name), e.at.path) for model in _models(e.fields)
        )
        where = e.at.key(ServiceKeys.ALIASES.name)
        model_claims.extend((alias, where, e.at.path) for alias in _aliases(e.fields))
    report(model_claims, "model {claim} is also served by {owner}")


def _check_log_files(entries: list[Entry], cwd: str) -> None:
    """
    A default log file may not be another service's log file: C{a/b} and
    C{a_b} would write into one file.  Two services given the same
    C{LogFilePath} share it: that is the user's choice.
    """
    name, given = ServiceKeys.NAME, ServiceKeys.LOG_FILE_PATH
    named = [e for e in entries if name in e.fields.values]
    owners: dict[str, Entry] = {}
    for e in named:
        if given in e.fields.values:
            owners.setdefault(_log_file(e.fields, cwd), e)
    for e in named:
        if e.fields.given(given):  # a bad LogFilePath is reported already
            continue
        path = _log_file(e.fields, cwd)
        owner = owners.setdefault(path, e)
        # The same name twice is reported already, as such.
        if owner.fields.values[name] != e.fields.values[name]:
            e.at.key(name.name).problem(
                f"its default log file {quote(path)} is also the log file of {owner.at.path}:"
                f" give one of them a {given.name}"
            )


def _log_file(fields: Fields, cwd: str) -> str:
    """A service's log file, absolute: its C{LogFilePath}, else its name in C{logs/}."""
    default = os.path.join("logs", log_file_name(fields.values[ServiceKeys.NAME]))
    return os.path.normpath(os.path.join(cwd, fields.get(ServiceKeys.LOG_FILE_PATH, default)))


def _models(fields: Fields) -> tuple[str, ...]:
    """The OpenAI model ids a service answers to: its OpenAiApiModels, else its Name."""
    if not fields.get(ServiceKeys.OPENAI_API):
        return ()
    name = fields.get(ServiceKeys.NAME)
    return fields.get(ServiceKeys.OPENAI_API_MODELS) or (() if name is None else (name,))


def _aliases(fields: Fields) -> tuple[str, ...]:
    """The more model ids of a service (its Aliases), when it serves the OpenAI port."""
    return fields.get(ServiceKeys.ALIASES, ()) if fields.get(ServiceKeys.OPENAI_API) else ()


def _service(
    fields: Fields, cwd: str, idle: float, default_url: str | None, address: str
) -> ServiceConfig:
    """
    Build one service, checked.

    @param fields: its checked keys.
    @param cwd: lmproxy's working directory.
    @param idle: the global C{ShutDownAfterInactivitySeconds}, or its default.
    @param default_url: the C{DefaultServiceUrl} template, or C{None}.
    @param address: the top-level C{ListenAddress}, or its default.
    """
    work_dir = fields.get(ServiceKeys.WORK_DIR)
    return ServiceConfig(
        **ServiceKeys.arguments(fields),
        work_dir=None if work_dir is None else os.path.normpath(os.path.join(cwd, work_dir)),
        log_file_path=_log_file(fields, cwd),
        idle_timeout=fields.get(ServiceKeys.SHUT_DOWN_AFTER_INACTIVITY, idle),
        openai_api_models=_models(fields),
        listen_address=fields.get(ServiceKeys.LISTEN_ADDRESS, address),
        # ServiceUrl: null is kept as None (Key.keeps_null): no URL, not the default.
        service_url=render(
            fields.get(ServiceKeys.SERVICE_URL, default_url), fields.get(ServiceKeys.LISTEN_PORT)
        ),
    )
