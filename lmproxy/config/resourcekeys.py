"""
The keys of an object in C{ResourcesAvailable}, and the converter of
C{ResourcesAvailable} itself; part of L{lmproxy.config.keys}, which
re-exports them.
"""

from __future__ import annotations

from typing import Any

import attrs

from lmproxy.config.model import ResourceConfig
from lmproxy.config.problems import At
from lmproxy.config.schema import Fields, Key, Section, check_named, check_object
from lmproxy.config.values import (
    Invalid,
    JsonObject,
    count,
    display_name,
    is_int,
    milliseconds,
    show,
    text,
)

_RESOURCE = attrs.fields(ResourceConfig)


class ResourceKeys(Section):
    """The keys of an object in C{ResourcesAvailable} (see L{check_resources})."""

    # No fills: build._resource gives amount (None when only measured).
    AMOUNT = Key(
        "Amount",
        count,
        doc="The total.  With a CheckCommand it may be left out (or 0): then it is only measured.",
    )
    CHECK_COMMAND = Key(
        "CheckCommand",
        text,
        doc="A shell command that prints how much is free now.",
        fills=_RESOURCE.check_command,
    )
    CHECK_INTERVAL = Key(
        "CheckWhenNotEnoughIntervalMilliseconds",
        milliseconds,
        doc="How often to run the CheckCommand again while there is not enough.",
        fills=_RESOURCE.check_interval,
    )

    @classmethod
    def check(cls, fields: Fields, at: At) -> None:
        """A resource needs an amount, a command that measures it, or both."""
        if not (fields.given(cls.AMOUNT) or fields.given(cls.CHECK_COMMAND)):
            at.problem(f"needs an {cls.AMOUNT.name}, a {cls.CHECK_COMMAND.name}, or both")


def _resource(value: Any, at: At) -> Fields:
    """One value of C{ResourcesAvailable}: an amount, or an object of L{ResourceKeys}."""
    if is_int(value):
        return Fields({ResourceKeys.AMOUNT: count(value, at)})
    if not isinstance(value, JsonObject):
        raise Invalid(
            f"expected a non-negative integer, or an object with {ResourceKeys.AMOUNT.name}"
            f" and/or {ResourceKeys.CHECK_COMMAND.name}, got {show(value)}"
        )
    return check_object(value, at, ResourceKeys)


def check_resources(value: Any, at: At) -> dict[str, Fields | None]:
    """
    The converter of C{ResourcesAvailable}.

    @return: resource name to its checked keys, or to C{None} when the
        resource has a problem (so that no requirement of it is checked).
    """
    resources = check_named(value, at, _resource)
    for name in resources:
        try:
            display_name(name, at)
        except Invalid as e:
            at.name(name).problem(f"the name {e}")
            resources[name] = None
    return {name: None if f is None or f.bad else f for name, f in resources.items()}
