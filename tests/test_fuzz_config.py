"""
Property-based tests of the config parser: whatever the file holds, loading it
gives a L{Config} or a L{ConfigError} whose every problem is one line that
starts with where it is, never a traceback.

The configs are drawn with the right shape (every declared key, spelled as
declared or in another case, given twice, unknown keys) and with values that
are wrong in every way: other types, huge numbers, floats, NaN, unicode, NUL,
lone surrogates, C{/} and C{..} in names, nested junk.  Whole files of random
text, of JSONC-like tokens and of random bytes try the JSONC parser.

Derandomized, with a bounded number of examples: the same run each time, in
a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, ConfigError, load_config, parse_config
from lmproxy.config.keys import ResourceKeys, ServiceKeys, TopLevelKeys
from lmproxy.config.problems import quote
from lmproxy.config.schema import Section
from lmproxy.config.values import characters

SOURCE = "config.jsonc"
CWD = "/srv/lmproxy"

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Pairs(list[tuple[str, Any]]):
    """A JSON object as (key, value) pairs, so that a key may be given twice."""


def dump(value: Any) -> str:
    """JSON text for a drawn value (NaN and Infinity as JSON5 writes them)."""
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(k)}: {dump(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(dump, value)) + "]"
    return json.dumps(value)


# Strings a config's users and attackers write: paths, traversal, controls,
# NUL, lone and paired surrogates, templates, shell syntax, long ones.
_NASTY = [
    "",
    " ",
    "/",
    "..",
    "../..",
    "a/../../b",
    ".hidden",
    "Qwen/Qwen2.5-7B",
    "\\",
    "\x00",
    "a\x00b",
    "\n",
    "\x1b[31m",
    "\x85",
    "\u2028",
    "\u202e",
    "\ud800",
    "\udfff",
    "\ud83d\ude00",
    "{{.PORT}}",
    "{{",
    "}}",
    "{{.Other}}",
    "$(id)",
    "a; rm -rf /",
    "'",
    '"',
    "*",
    "7070",
    "-1",
    "0",
    "99999999999999999999",
    "Debug",
    "nOrMaL",
    "RAM",
    "localhost",
    "::1",
    "127.0.0.1",
    "0.0.0.0",
    "*",
    "x" * 300,
    "é" * 200,
]

_ANY_CHARACTER = st.characters(exclude_categories=())


def strings() -> st.SearchStrategy[str]:
    pieces = st.one_of(st.sampled_from(_NASTY), st.text(_ANY_CHARACTER, max_size=6))
    return st.lists(pieces, max_size=3).map("".join)


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([0, 1, -1, 65535, 65536, 2**31, 2**63, 2**64, -(2**63), 10**400]),
        st.floats(),
        st.sampled_from([0.5, 1e300, 1e400, -0.0, float("nan"), float("inf")]),
        strings(),
    )


def junk() -> st.SearchStrategy[Any]:
    """Any JSON value: scalars, and lists and objects of them, nested."""
    # The objects of an ApiKeys entry, which name a file or a variable to read.
    sources = st.builds(
        lambda key, value: Pairs([(key, value)]),
        st.sampled_from(["File", "Env", "file"]),
        st.one_of(strings(), scalars()),
    )
    return st.recursive(
        st.one_of(scalars(), sources),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.lists(st.tuples(strings(), inner), max_size=4).map(Pairs),
        ),
        max_leaves=10,
    )


def spellings(section: type[Section]) -> st.SearchStrategy[str]:
    """A key of C{section} as declared, in another case, or an unknown one."""
    names = [key.name for key in section.keys]
    return st.one_of(
        st.sampled_from(names),
        st.sampled_from(names).map(str.lower),
        st.sampled_from(names).map(str.upper),
        strings(),
    )


def objects(section: type[Section], value: st.SearchStrategy[Any]) -> st.SearchStrategy[Pairs]:
    """Objects of C{section}'s keys (some given twice, in two cases), or junk."""
    pairs = st.lists(st.tuples(spellings(section), value), max_size=len(section.keys) + 2)
    return st.one_of(pairs.map(Pairs), junk())


def values_for(section: type[Section]) -> st.SearchStrategy[Any]:
    """A value for a key of C{section}: junk, or an object for a nested key."""
    nested = [key.nested for key in section.keys if key.nested is not None]
    return st.one_of(junk(), *(objects(n, junk()) for n in nested))


def services() -> st.SearchStrategy[Any]:
    plausible = st.one_of(values_for(ServiceKeys), st.sampled_from(["m", "8080", "18080", 7070]))
    service = objects(ServiceKeys, plausible)
    return st.one_of(st.lists(service, max_size=4), junk())


# Names that load, and whose log file names must stay in logs/ and apart.
_NAMES = [
    "m",
    "Qwen/Qwen2.5-7B",
    "Qwen_Qwen2.5-7B",
    "..",
    "../../x",
    ".h",
    "_h",
    "a\\b",
    "Модель",
    "x" * 300,
]


@st.composite
def near_valid(draw: st.DrawFn) -> Pairs:
    """
    A config that loads but for a few drawn values: services and resources
    with good or drawn names, most keys good, a few replaced by anything.
    """
    names = draw(st.lists(_NAME, min_size=1, max_size=4))
    resource_names = draw(st.lists(_NAME, max_size=2, unique=True))
    services = []
    for index, service_name in enumerate(names):
        service = {
            "Name": service_name,
            "Command": "server",
            "ListenPort": 8000 + index,
            "ProxyTargetPort": 9000 + index,
            "ResourceRequirements": Pairs((r, 1) for r in resource_names),
        }
        for key, value in draw(_REPLACEMENTS):
            service[key] = value
        services.append(Pairs(service.items()))
    resources = Pairs((r, draw(_AMOUNT)) for r in resource_names)
    return Pairs([("Services", services), ("ResourcesAvailable", resources)])


def resources() -> st.SearchStrategy[Any]:
    entry = st.one_of(objects(ResourceKeys, junk()), scalars())
    return st.one_of(st.lists(st.tuples(strings(), entry), max_size=3).map(Pairs), junk())


# near_valid's parts, built once: building strategies on each draw is slow.
_NAME = st.integers(0, 3).flatmap(lambda i: strings() if i == 3 else st.sampled_from(_NAMES))
_REPLACEMENTS = st.lists(
    st.tuples(
        st.sampled_from([key.name for key in ServiceKeys.keys if key.alias_of is None]),
        st.one_of(strings(), scalars(), junk()),
    ),
    max_size=2,
)
_AMOUNT = st.one_of(*[st.just(10)] * 4, scalars(), objects(ResourceKeys, scalars()))


def documents() -> st.SearchStrategy[Pairs]:
    """Top-level objects: each declared key (in some spelling) with a drawn value."""
    other = values_for(TopLevelKeys)
    special = {
        TopLevelKeys.SERVICES.name: services(),
        TopLevelKeys.RESOURCES_AVAILABLE.name: resources(),
    }
    spelled = st.one_of(
        [
            st.tuples(
                st.sampled_from([key.name, key.name.lower(), key.name.upper()]),
                special.get(key.name, other),
            )
            for key in TopLevelKeys.keys
        ]
    )
    unknown = st.tuples(strings(), junk())
    return st.lists(st.one_of(spelled, spelled, unknown), max_size=8).map(Pairs)


def strings_in(value: Any) -> Iterator[str]:
    """Every string in a loaded config, its objects' attributes and containers included."""
    if isinstance(value, str):
        yield value
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from strings_in(getattr(value, field.name))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings_in(k)
            yield from strings_in(v)
    elif isinstance(value, list | tuple | frozenset | set):
        for item in value:
            yield from strings_in(item)


def _unshowable(text: str) -> list[str]:
    """The characters of C{text} that would break its line or a terminal."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")]


class OutcomeChecks(SynchronousTestCase):
    """What every outcome of loading a config must be."""

    def check_problems(self, error: ConfigError, starts: list[str]) -> None:
        """Every problem is one showable line that starts with one of C{starts}."""
        self.assertTrue(error.problems)
        for problem in error.problems:
            self.assertIsInstance(problem, str)
            self.assertEqual(_unshowable(problem), [], problem)
            self.assertTrue(
                any(re.match(re.escape(s) + r"[.\[: ]", problem) for s in starts),
                f"no path: {problem!r}",
            )

    def check_config(self, config: Config) -> None:
        """A loaded config holds no NUL nor lone surrogate, and names on one line."""
        self.assertIsInstance(config, Config)
        for text in strings_in(config):
            self.assertNotIn("\x00", text)
            text.encode()  # raises for a lone surrogate
        for warning in config.warnings:
            self.assertEqual(_unshowable(warning), [], warning)
        for service in config.services:
            self.assertEqual(_unshowable(service.name), [], service.name)
            self.assertEqual(service.log_file_path, os.path.normpath(service.log_file_path))

    def load(self, text: str, top_keys: list[str]) -> None:
        """
        Parse C{text}: a config, or a config error with paths; anything
        else fails the test with its traceback.
        """
        try:
            config = parse_config(text, SOURCE, CWD)
        except ConfigError as e:
            starts = [SOURCE, "top level", *(k.name for k in TopLevelKeys.keys)]
            starts += [k if k.isprintable() else quote(k) for k in map(characters, top_keys)]
            self.check_problems(e, starts)
        else:
            self.check_config(config)


class ConfigFuzzTests(OutcomeChecks):
    """Configs of the right shape with random values."""

    @FUZZ
    @given(documents())
    def test_documents(self, document: Pairs) -> None:
        self.load(dump(document), [key for key, _ in document])

    @FUZZ
    @given(near_valid())
    def test_near_valid(self, document: Pairs) -> None:
        """Configs that mostly load, so that what a loaded config holds is checked too."""
        self.load(dump(document), [key for key, _ in document])

    @FUZZ
    @given(services())
    def test_services(self, services: Any) -> None:
        """Only services, so that more of them get past the first checks."""
        self.load(dump(Pairs([("Services", services)])), ["Services"])

    @settings(FUZZ, max_examples=50)
    @given(
        st.integers(min_value=1, max_value=5000), st.sampled_from(["[", '{"a": ', '[{"Services": '])
    )
    def test_deep_nesting(self, depth: int, opening: str) -> None:
        self.load('{"Services": ' + opening * depth, ["Services"])


def jsonc_tokens() -> st.SearchStrategy[str]:
    tokens = st.sampled_from(
        [
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            '"',
            "'",
            "//",
            "/*",
            "*/",
            "\n",
            " ",
            "\\",
            "\x00",
            "\ufeff",
            "0x1F",
            "1e999",
            "-",
            ".5",
            "NaN",
            "Infinity",
            "true",
            "null",
            "Services",
            '"Services"',
            '"Name"',
            "\\u0000",
            "\\ud800",
            "\\x41",
        ]
    )
    return st.lists(st.one_of(tokens, st.text(_ANY_CHARACTER, max_size=3)), max_size=40).map(
        "".join
    )


class FileFuzzTests(OutcomeChecks):
    """Whole files of junk: the JSONC parser's errors name the file."""

    @FUZZ
    @given(st.one_of(st.text(_ANY_CHARACTER), jsonc_tokens()))
    def test_text(self, text: str) -> None:
        self.load(text, [])

    @settings(FUZZ, max_examples=100)
    @given(st.binary(max_size=200))
    def test_bytes(self, data: bytes) -> None:
        """Random bytes written to a file and loaded from it, BOM and bad UTF-8 included."""
        with tempfile.TemporaryDirectory() as cwd:
            with open(os.path.join(cwd, SOURCE), "wb") as f:
                f.write(data)
            try:
                config = load_config(SOURCE, cwd)
            except ConfigError as e:
                self.check_problems(e, [SOURCE, "top level", *(k.name for k in TopLevelKeys.keys)])
            else:
                self.assertIsInstance(config, Config)
