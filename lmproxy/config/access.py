"""
The converters of the keys that say who may reach lmproxy: C{ListenAddress},
C{ApiKeys}, C{AllowedHosts} and C{CorsAllowedOrigins}; and L{read_keys},
which build calls to read the keys kept in files and environment variables.

A key is never part of a message: a problem with one names its place and
what is wrong (empty, unreadable, not sendable in a header), not its value.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen

from lmproxy.config.model import Secret
from lmproxy.config.problems import At
from lmproxy.config.schema import Fields, Key, Section, check_object
from lmproxy.config.values import UNSET, Invalid, JsonObject, show, text


def ip_address(value: Any, at: At) -> Any:
    """
    An IP address to listen on, IPv4 or IPv6, as a literal (C{"127.0.0.1"},
    C{"::1"}, C{"0.0.0.0"}, C{"::"}); normalized (C{"0:0::1"} is C{"::1"}).
    A host name is refused: what it resolves to can change, and lmproxy must
    never listen where the config did not say.
    """
    given = text(value, at)
    if given is UNSET:
        return given
    try:
        return str(ipaddress.ip_address(given))
    except ValueError:
        raise Invalid(
            f'expected an IP address such as "127.0.0.1", "::1", "0.0.0.0" (every IPv4'
            f' interface) or "::" (every interface), got {show(value)}'
        ) from None


def _strings(value: Any, at: At, what: str) -> list[tuple[str, At]]:
    """The non-empty strings of a list, each with its place; other items reported."""
    if not isinstance(value, list) or isinstance(value, JsonObject):
        raise Invalid(f"expected a list of {what}, got {show(value)}")
    found = []
    for index, item in enumerate(value):
        item_at = at.index(index)
        if isinstance(item, str) and item:
            found.append((item, item_at))
        else:
            item_at.problem(f"expected a non-empty string, got {show(item)}")
    return found


# A DNS name: labels of letters, digits and hyphens (and underscores, which
# some local names have), separated by dots.
_HOST_NAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*", re.ASCII)


def host_names(value: Any, at: At) -> Any:
    """A list of host names, without ports, as a tuple in lowercase; C{[]} is not set."""
    names: dict[str, None] = {}
    for item, item_at in _strings(value, at, "host names"):
        name = item.lower()
        if _HOST_NAME.fullmatch(name):
            names[name] = None
        else:
            item_at.problem(
                f'expected a host name such as "gpu-box.lan" (no port), got {show(item)}'
            )
    return tuple(names) or UNSET


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str | None:
    """
    An origin as browsers send it in C{Origin}: C{scheme://host[:port]} in
    lowercase, without the scheme's default port.

    @param origin: an origin, as written in the config or sent by a browser.
    @return: the normalized origin; C{None} when C{origin} is not one (a
        path, no host, a bad port).
    """
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:  # "http://[", "http://h:99999"
        return None
    if not (parts.scheme and parts.hostname) or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == _DEFAULT_PORTS.get(parts.scheme):
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def origins(value: Any, at: At) -> Any:
    """A list of origins (C{"http://localhost:3000"}) or C{"*"}, normalized, as a tuple."""
    found: dict[str, None] = {}
    for item, item_at in _strings(value, at, 'origins (or ["*"])'):
        origin = "*" if item.strip() == "*" else normalize_origin(item)
        if origin is None:
            item_at.problem(
                f'expected an origin such as "http://localhost:3000" (scheme, host and'
                f' port, no path), or "*" for any, got {show(item)}'
            )
        else:
            found[origin] = None
    return tuple(found) or UNSET


class KeySourceKeys(Section):
    """The keys of an object in C{ApiKeys}: where a key is kept, instead of the config."""

    FILE = Key(
        "File", text, doc="A file holding the key (relative paths: to lmproxy's working directory)."
    )
    ENV = Key("Env", text, doc="An environment variable holding the key.")

    @classmethod
    def check(cls, fields: Fields, at: At) -> None:
        """One source, no more, no less."""
        if fields.given(cls.FILE) == fields.given(cls.ENV):
            at.problem(f"expected either {cls.FILE.name} or {cls.ENV.name}")


@frozen
class KeySource:
    """
    Where one API key is: in the config itself, in a file, or in an
    environment variable (exactly one of the three is set).

    @ivar at: its place in the config, for the problems of reading it.
    """

    at: At
    literal: Secret | None = None
    file: str | None = None
    env: str | None = None


def api_keys(value: Any, at: At) -> Any:
    """
    C{ApiKeys}: a list whose entries are each a key, C{{"File": path}} or
    C{{"Env": NAME}}; a list of L{KeySource}s (read by L{read_keys}), C{[]}
    being not set.
    """
    if not isinstance(value, list) or isinstance(value, JsonObject):
        raise Invalid(
            f'expected a list of keys (each a string, {{"File": path}} or {{"Env": NAME}}),'
            f" got {_kind(value)}"
        )
    sources = []
    for index, item in enumerate(value):
        item_at = at.index(index)
        if isinstance(item, str):
            if _key_problem(item, item_at):
                sources.append(KeySource(item_at, literal=Secret(item)))
            continue
        try:
            fields = check_object(item, item_at, KeySourceKeys)
        except Invalid:
            # show() would print the key: say only what it is.
            item_at.problem(
                f'expected a string, {{"File": path}} or {{"Env": NAME}}, got {_kind(item)}'
            )
            continue
        file, env = fields.get(KeySourceKeys.FILE), fields.get(KeySourceKeys.ENV)
        if (file is None) != (env is None):
            where = item_at.key((KeySourceKeys.FILE if file else KeySourceKeys.ENV).name)
            sources.append(KeySource(where, file=file, env=env))
    return sources or UNSET


def _kind(value: Any) -> str:
    """What a JSON value is, without showing it (it may be a key)."""
    if isinstance(value, str):
        return "a string"
    if isinstance(value, JsonObject):
        return "an object"
    if isinstance(value, bool) or value is None:
        return "true, false or null"
    return "a number" if isinstance(value, int | float) else "a list"


def _key_problem(key: str, at: At) -> bool:
    """
    Whether C{key} can be a key (reporting why not at C{at}): a client must
    be able to send it in a header, so it is printable ASCII without spaces.
    """
    if not key:
        at.problem("the key is empty")
        return False
    if not all("!" <= c <= "~" for c in key):
        at.problem("the key has characters that cannot be sent in a header (spaces, non-ASCII)")
        return False
    return True


MAX_KEY_FILE_BYTES = 4096
"""A key file longer than this is refused: keys are short, and C{/dev/zero} is not one."""


def _read_key_file(path: str, at: At) -> str | None:
    """
    The key in the file at C{path}, or C{None} after a problem at C{at}.

    Only a regular file is read (a FIFO would block the load), and only its
    first L{MAX_KEY_FILE_BYTES} bytes.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                at.problem(f"the key file {path} is not a regular file")
                return None
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        at.problem(f"cannot read the key file {path}: {e.strerror or e}")
        return None
    if len(data) > MAX_KEY_FILE_BYTES:
        at.problem(f"the key file {path} is over {MAX_KEY_FILE_BYTES} bytes: it holds no key")
        return None
    try:
        key = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        at.problem(f"the key file {path} is not UTF-8 text")
        return None
    if not key:
        at.problem(f"the key file {path} is empty")
        return None
    return key


def read_keys(sources: list[KeySource], cwd: str) -> tuple[Secret, ...]:
    """
    The keys of C{ApiKeys}, read from their files and environment variables.

    A file's key is its content stripped of surrounding whitespace (a final
    newline); so is a variable's.  A missing, unreadable or empty file or
    variable is a problem at its source's place.

    @param sources: what L{api_keys} gave.
    @param cwd: lmproxy's working directory, for relative paths.
    @return: the keys that could be read.
    """
    keys = []
    for source in sources:
        if source.literal is not None:
            keys.append(source.literal)
            continue
        if source.file is not None:
            path = os.path.join(cwd, source.file)
            key = _read_key_file(path, source.at)
            if key is None:
                continue
        else:
            assert source.env is not None
            key = os.environ.get(source.env, "").strip()
            if not key:
                source.at.problem(f"the environment variable {source.env} is not set, or empty")
                continue
        if _key_problem(key, source.at):
            keys.append(Secret(key))
    return tuple(keys)
