"""
Tests for the key declarations of L{lmproxy.config.keys}: they are complete,
consistent with the model, and documented in README.rst.
"""

from __future__ import annotations

import json
import os
import re

import attrs
from twisted.trial.unittest import SynchronousTestCase

from lmproxy.config import Config, ResourceConfig, ServiceConfig, parse_config
from lmproxy.config.keys import ResourceKeys, ServiceKeys, TopLevelKeys
from lmproxy.config.schema import Key, Section

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.rst")

# What each subsection of README's "Configuration" documents.
README_SUBSECTIONS: dict[str, type[Section]] = {
    "Top level": TopLevelKeys,
    "Resources": ResourceKeys,
    "Services": ServiceKeys,
}

# The model attributes that no key fills as it is: a rule of lmproxy.config.build
# computes them (the name of a resource is its key in ResourcesAvailable).
FILLED_BY_RULES = {
    ResourceConfig: {"name", "amount"},
    ServiceConfig: {
        "work_dir",
        "log_file_path",
        "idle_timeout",
        "openai_api_models",
        "service_url",
        "listen_address",
    },
    Config: {
        "services",
        "resources",
        "warnings",
        "openai_listen_address",
        "openai_api_keys",
        "management_listen_address",
        "management_api_keys",
    },
}


def _sections() -> list[type[Section]]:
    """Every section, nested ones included."""
    sections = list(README_SUBSECTIONS.values())
    sections += [key.nested for key in TopLevelKeys.keys if key.nested is not None]
    return sections


def documented_names(section: type[Section]) -> set[str]:
    """
    The names under which README documents the keys of C{section}: a key
    holding a nested object is documented by its keys, as C{OpenAiApi.ListenPort}.
    """
    names = set()
    for key in section.keys:
        if key.nested is None:
            names.add(key.name)
        else:
            names.update(f"{key.name}.{inner.name}" for inner in key.nested.keys)
    return names


def readme_terms() -> dict[str, set[str]]:
    """
    @return: subsection title of README's "Configuration" section to the names
        in its definition terms (the unindented lines that start with a literal).
    """
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = lines.index("Configuration")
    terms: dict[str, set[str]] = {}
    title = None
    for index in range(start + 2, len(lines) - 1):
        line, underline = lines[index], lines[index + 1]
        if underline and set(underline) == {"="}:
            break  # the next top-level section
        if underline and set(underline) == {"-"}:
            title = line
            terms[title] = set()
        elif title is not None and line.startswith("``"):
            terms[title].update(re.findall(r"``([^`]+)``", line))
    return terms


class ReadmeTests(SynchronousTestCase):
    """README.rst's configuration reference documents exactly the declared keys."""

    def test_every_key_documented(self) -> None:
        terms = readme_terms()
        for title, section in README_SUBSECTIONS.items():
            self.assertIn(title, terms, "README's Configuration has no such subsection")
            missing = documented_names(section) - terms[title]
            self.assertEqual(missing, set(), f"not documented under {title!r} in README.rst")

    def test_nothing_else_documented(self) -> None:
        """Every term names a declared key: a renamed or removed key leaves no stale entry."""
        terms = readme_terms()
        for title, section in README_SUBSECTIONS.items():
            unknown = terms.get(title, set()) - documented_names(section)
            self.assertEqual(unknown, set(), f"not a key, under {title!r} in README.rst")

    def test_terms_found(self) -> None:
        """The README reader sees the terms (a change of layout would make the tests vacuous)."""
        terms = readme_terms()
        self.assertIn("OpenAiApi.ListenPort", terms["Top level"])
        self.assertIn("Command", terms["Services"])


class DeclarationTests(SynchronousTestCase):
    """The declarations are complete and consistent."""

    def test_names_unique(self) -> None:
        """Keys match case-insensitively, so no two keys of a section may differ only by case."""
        for section in _sections():
            names = [key.name.casefold() for key in section.keys]
            self.assertEqual(len(names), len(set(names)), section.__name__)

    def test_docs(self) -> None:
        """Every key has its one-line doc."""
        for section in _sections():
            for key in section.keys:
                self.assertTrue(key.doc.endswith("."), key.name)
                self.assertNotIn("\n", key.doc, key.name)

    def test_every_attribute_filled(self) -> None:
        """Each model attribute is filled by exactly one key, or by a rule."""
        filled: dict[type, list[str]] = {model: [] for model in FILLED_BY_RULES}
        for section in _sections():
            for key in section.keys:
                if key.fills is not None:
                    filled[_model_of(key)].append(key.fills.name)
        for model, rules in FILLED_BY_RULES.items():
            by_keys = filled[model]
            self.assertEqual(len(by_keys), len(set(by_keys)), model.__name__)
            self.assertEqual(
                set(by_keys) | rules, {a.name for a in attrs.fields(model)}, model.__name__
            )
            self.assertEqual(set(by_keys) & rules, set(), model.__name__)

    def test_alias(self) -> None:
        self.assertIs(ServiceKeys.TARGET_PORT.alias_of, ServiceKeys.PROXY_TARGET_PORT)
        self.assertIsNone(ServiceKeys.TARGET_PORT.fills)

    def test_required(self) -> None:
        required = [key.name for s in _sections() for key in s.keys if key.missing is not None]
        self.assertEqual(required, ["Services", "Name", "Command", "ProxyTargetPort"])


def _model_of(key: Key) -> type:
    """The model class whose attribute C{key} fills."""
    assert key.fills is not None
    for model in FILLED_BY_RULES:
        if any(a is key.fills for a in attrs.fields(model)):
            return model
    raise AssertionError(f"{key.name} fills no model attribute")


class DefaultTests(SynchronousTestCase):
    """An absent key gets its declared default, which is its model attribute's."""

    def test_defaults(self) -> None:
        service = {"Name": "a", "Command": "srv", "ProxyTargetPort": 9000, "OpenAiApi": True}
        config = parse_config(
            json.dumps({"Services": [service], "ResourcesAvailable": {"R": {"Amount": 1}}}),
            "config.json",
            "/srv",
        )
        (parsed_service,) = config.services
        (resource,) = config.resources
        given = {ServiceKeys.NAME, ServiceKeys.COMMAND, ServiceKeys.PROXY_TARGET_PORT}
        given |= {ServiceKeys.OPENAI_API, ResourceKeys.AMOUNT}
        objects = {Config: config, ServiceConfig: parsed_service, ResourceConfig: resource}
        checked = 0
        for section in _sections():
            for key in section.keys:
                if key.fills is None or key in given:
                    continue
                parsed = getattr(objects[_model_of(key)], key.fills.name)
                self.assertEqual(parsed, key.default, key.name)
                checked += 1
        self.assertGreater(checked, 15)

    def test_rule_defaults(self) -> None:
        """A key that fills no attribute has the default its rule falls back to."""
        self.assertEqual(TopLevelKeys.SHUT_DOWN_AFTER_INACTIVITY.default, 120.0)
        self.assertEqual(ServiceKeys.TARGET_PORT.default, attrs.NOTHING)
        self.assertEqual(ServiceKeys.RESOURCE_REQUIREMENTS.default, {})
