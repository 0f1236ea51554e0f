"""
The schema's building blocks: L{Key}, the declaration of one config key;
L{Section}, the keys of one kind of config object; and L{check_object},
which reads a JSON object against a section.

The declarations themselves are in L{lmproxy.config.keys}.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar

import attrs
from attrs import define, field, frozen

from lmproxy.config.problems import At, quote
from lmproxy.config.values import UNSET, Convert, Invalid, JsonObject, show


@frozen(eq=False)
class Key:
    """
    One config key, declared once: everything the parser, its messages and
    the README test need to know about it.

    Keys compare by identity, so that checked values can be stored by key.

    @ivar name: the JSON name in its canonical spelling (keys match
        case-insensitively); messages and paths use this spelling.
    @ivar convert: the converter of its value (see L{lmproxy.config.values}).
    @ivar doc: what it is, in one line.
    @ivar fills: the model attribute that takes the converted value as it is,
        e.g. C{attrs.fields(ServiceConfig).listen_port}; C{None} when a rule
        of L{lmproxy.config.build} computes what the key means, or when it
        holds a nested object.
    @ivar fallback: what an absent key means when it fills no attribute (see
        L{default}).
    @ivar missing: for a required key, the problem reported when it is
        absent; C{None} for an optional one.
    @ivar alias_of: the key that this one is another name for: it fills the
        same attribute, it satisfies that key's requirement, and giving both
        is a problem.
    @ivar keeps_null: whether C{null} is a value of its own (kept as C{None})
        rather than "not set".
    @ivar nested: the section of the object that the key holds, for a key
        whose value is an object with fixed keys.
    """

    name: str
    convert: Convert
    doc: str
    fills: attrs.Attribute[Any] | None = None
    fallback: Any = None
    missing: str | None = None
    alias_of: Key | None = None
    keeps_null: bool = False
    nested: type[Section] | None = None

    @property
    def default(self) -> Any:
        """
        What the key means when it is absent: the default of the attribute
        it fills (C{attrs.NOTHING} for a required attribute), else
        L{fallback}.
        """
        target = self.alias_of or self
        if target.fills is None:
            return self.fallback
        default: Any = target.fills.default
        # attrs' stubs type Factory as a function; at run time it is a class.
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            return default.factory()
        return default


def nested_object(name: str, section: type[Section], doc: str) -> Key:
    """
    Declare a key whose value is an object with the keys of C{section}.

    @param name: the JSON name of the key.
    @param section: the keys of the object it holds.
    @param doc: what it is, in one line.
    @return: the key; its checked value is a L{Fields}.
    """
    return Key(name, lambda value, at: check_object(value, at, section), doc, nested=section)


class Section:
    """
    The keys of one kind of config object.

    A subclass declares them as L{Key} class attributes, and is a namespace,
    never instantiated: C{ServiceKeys.LISTEN_PORT}.  Problems of missing keys
    are reported in the order of the declarations.
    """

    keys: ClassVar[tuple[Key, ...]] = ()
    """Every key of the section, in the order of the declarations."""

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.keys = tuple(value for value in vars(cls).values() if isinstance(value, Key))

    @classmethod
    def check(cls, fields: Fields, at: At) -> None:
        """
        Check the rules between keys of one object of this section; the
        required keys and the aliases are checked already.

        @param fields: what L{check_object} read.
        @param at: the place of the object.
        """

    @classmethod
    def arguments(cls, fields: Fields) -> dict[str, Any]:
        """
        @param fields: what L{check_object} read, without problems.
        @return: model keyword arguments: the value of every key given that
            fills an attribute, by the attribute's name.  The model's
            defaults apply to the others.
        """
        arguments = {}
        for key, value in fields.values.items():
            target = key.alias_of or key
            if target.fills is not None:
                arguments[target.fills.name] = value
        return arguments


@define
class Fields:
    """
    The keys of one config object, checked.

    @ivar values: the converted value of every key given with a good value
        (a key that was not set is absent).
    @ivar bad: the keys given with a bad value (already reported).
    """

    values: dict[Key, Any] = field(factory=dict)
    bad: set[Key] = field(factory=set)

    def given(self, key: Key) -> bool:
        """
        @return: whether C{key} was set, with a good or a bad value.
        """
        return key in self.values or key in self.bad

    def get(self, key: Key, default: Any = None) -> Any:
        """
        @return: the converted value of C{key}, or C{default} if it has none.
        """
        return self.values.get(key, default)


def check_object(value: Any, at: At, section: type[Section]) -> Fields:
    """
    Check a config object against the keys of a section.

    Keys match case-insensitively.  C{null} means "not set", except for keys
    that L{keep it<Key.keeps_null>}.  Unknown keys and keys given twice are
    reported, then missing required keys, aliases given with their key, and
    the section's own rules.

    @param value: a parsed JSON value.
    @param at: its place.
    @param section: the keys it may have.
    @return: the checked keys.
    @raise Invalid: C{value} is not an object.
    """
    if not isinstance(value, JsonObject):
        raise Invalid(f"expected an object, got {show(value)}")
    canonical = {key.name.casefold(): key for key in section.keys}
    spelled: dict[Key, str] = {}
    result = Fields()
    for given, item in value:
        key = canonical.get(given.casefold())
        if key is None:
            close = difflib.get_close_matches(given.casefold(), canonical, n=1)
            hint = f' (did you mean "{canonical[close[0]].name}"?)' if close else ""
            at.key(given).problem(f"unknown key{hint}")
            continue
        if key in spelled:
            first = spelled[key]
            spellings = "" if given == first else f' (as "{first}" and "{given}": keys ignore case)'
            at.key(key.name).problem(f"given twice{spellings}")
            continue
        spelled[key] = given
        if item is None:
            if key.keeps_null:
                result.values[key] = None
            continue
        try:
            converted = key.convert(item, at.key(key.name))
        except Invalid as e:
            at.key(key.name).problem(str(e))
            result.bad.add(key)
            continue
        if converted is not UNSET:
            result.values[key] = converted
    for key in section.keys:
        aliases = [other for other in section.keys if other.alias_of is key]
        if key.missing is not None and not any(map(result.given, [key, *aliases])):
            at.key(key.name).problem(key.missing)
    for key in section.keys:
        if key.alias_of is not None and result.given(key) and result.given(key.alias_of):
            at.key(key.name).problem(
                f"is another name for {key.alias_of.name}: give only one of them"
            )
    section.check(result, at)
    return result


def check_named(value: Any, at: At, convert: Convert) -> dict[str, Any]:
    """
    Check a map whose keys are names chosen by the user (case-sensitive).

    @param value: a parsed JSON value.
    @param at: its place.
    @param convert: the converter of each value.
    @return: name to converted value, or to C{None} when that value was bad.
    @raise Invalid: C{value} is not an object.
    """
    if not isinstance(value, JsonObject):
        raise Invalid(f"expected an object, got {show(value)}")
    result: dict[str, Any] = {}
    for name, item in value:
        if name in result:
            at.problem(f"{quote(name)} is given twice")
            continue
        try:
            result[name] = convert(item, at.name(name))
        except Invalid as e:
            at.name(name).problem(str(e))
            result[name] = None
    return result
