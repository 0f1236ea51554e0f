"""
Read a config: find the file, parse its JSONC text, check every key, and
build the model.

Pure: no reactor and no I/O but reading the file.  Keys match
case-insensitively; every problem is collected and reported at once, each
naming where it is (C{Services[2] ("Gemma-27B").ResourceRequirements: ...}).

How it works: json5 parses the text, keeping each object as the list of its
(key, value) pairs (a L{JsonObject}) so that repeated keys can be seen.
L{check_object} reads the top-level object against L{TopLevelKeys}, and the
converters of its keys read what is nested, each object against its own
section of L{lmproxy.config.keys}.  Then L{build} checks what involves
several objects and builds the L{Config}.
"""

from __future__ import annotations

import os
import re
from typing import Any

import json5

from lmproxy.config.build import build
from lmproxy.config.keys import TopLevelKeys
from lmproxy.config.model import Config
from lmproxy.config.problems import At, ConfigError
from lmproxy.config.schema import check_object
from lmproxy.config.values import JsonObject, show

# Looked for, in this order, when no path is given.
_CONFIG_FILES = ("config.json", "config.jsonc")


def load_config(path: str | None, cwd: str) -> Config:
    """
    Read and parse a config file.

    @param path: the file to read, relative to C{cwd}; C{None} looks for
        C{<cwd>/config.json}, then C{<cwd>/config.jsonc}.
    @param cwd: lmproxy's working directory.
    @return: the config.
    @raise ConfigError: no file, an unreadable file, or a bad config.
    """
    if path is None:
        candidates = [os.path.join(cwd, name) for name in _CONFIG_FILES]
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
    Parse and check the JSONC text of a config.

    @param text: the text.
    @param source: the file name, for messages.
    @param cwd: lmproxy's working directory: relative paths in the config are
        made absolute against it.
    @return: the config.
    @raise ConfigError: listing every problem found.
    """
    document = _parse_jsonc(text, source)
    if not isinstance(document, JsonObject):
        raise ConfigError([f"{source}: the top level must be an object, got {show(document)}"])
    at = At("", [])
    config = build(check_object(document, at, TopLevelKeys), at, cwd)
    if at.problems or config is None:
        raise ConfigError(at.messages())
    return config


# json5 reports syntax errors as "<string>:LINE MESSAGE at column COLUMN".
_JSON5_ERROR = re.compile(r"<string>:(?P<line>\d+) (?P<what>.*) at column (?P<column>\d+)$", re.S)


def _parse_jsonc(text: str, source: str) -> Any:
    """
    Parse JSONC (JSON5 is a superset), keeping objects as L{JsonObject}s.

    @raise ConfigError: the text is empty, or not JSONC.
    """
    if not text.strip():
        raise ConfigError([f"{source}: the file is empty"])
    try:
        return json5.loads(text, object_pairs_hook=JsonObject)
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply"]) from None
    except ValueError as e:
        match = _JSON5_ERROR.match(str(e))
        if match is None:
            raise ConfigError([f"{source}: syntax error: {e}"]) from None
        what = match["what"][:1].lower() + match["what"][1:]
        char = re.fullmatch('unexpected "(.)"', what, re.S)
        if char:  # json5 quotes the character as is: a newline, or '"""'
            what = f"unexpected {show(char[1])}"
        where = f"line {match['line']}, column {match['column']}"
        raise ConfigError([f"{source}: {where}: syntax error: {what}"]) from None
