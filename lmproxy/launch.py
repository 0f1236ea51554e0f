"""
What the C{lmproxy} command needs before the config's parser and Twisted are
imported: which file is the config, the ports its text seems to ask for, and
how lmproxy says it cannot run.

L{ports_in} finds the ports in a millisecond, with one regular expression and
no JSON parser (the config's parser needs ~100 ms of imports, and json5 more
to parse; even the json module is a few milliseconds of imports), so that
every port can listen within milliseconds of the launch.  It checks nothing
and reports nothing: the parser reads the file again and decides, and the
command then closes what it should not have opened and opens what this missed
(L{lmproxy.listen.sockets.take_ports}).  The ports it finds listen on every
IPv4 interface, the default address: so that no port ever listens on an
address that the config did not ask for, it finds none in a config that may
set a C{ListenAddress} (those ports listen once the config is parsed).

Standard library only, and only the modules that the console script has
imported already (C{re}) or that cost nearly nothing.
"""

from __future__ import annotations

import os
import re
import sys

# Not typing.TYPE_CHECKING: importing typing costs ~10 ms on the way to the
# first listening port.  Type checkers take a TYPE_CHECKING of any origin as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

# Looked for, in this order, when no path is given (as lmproxy.config does).
_CONFIG_FILES = ("config.json", "config.jsonc")

# A ListenAddress key, or a ListenPort key with a port number for its value,
# quoted or not (JSON5 allows unquoted keys), or else a whole string or
# comment, which is skipped: a key within a string or comment is not one.
# Matched against the casefolded text, as the parser matches keys.
_SCAN = re.compile(
    r"""
      (?P<address> (?: "listenaddress" | 'listenaddress' | \blistenaddress\b ) \s* : )
    | (?: "listenport" | 'listenport' | \blistenport\b ) \s* : \s*
      (?: "(?P<double>[0-9]+)" | '(?P<single>[0-9]+)' | (?P<bare>[0-9]+)\b )
    | " (?: [^"\\] | \\. )* " | ' (?: [^'\\] | \\. )* '
    | //[^\n]* | /\*.*?\*/
    """,
    re.IGNORECASE | re.DOTALL | re.VERBOSE | re.ASCII,
)


# A backslash before anything but the escapes that stand for punctuation or
# controls (a line break after it is a line continuation).
_LETTER_ESCAPE = re.compile(r"""\\[^"'\\/bfnrtv0]""")


def config_file(path: str | None, cwd: str) -> str | None:
    """
    The config file that L{lmproxy.config.load_config} will read.

    @param path: the C{-c} argument, relative to C{cwd}, or C{None}.
    @param cwd: lmproxy's working directory.
    @return: the file's path; C{None} when none is given and neither
        C{config.json} nor C{config.jsonc} exists.
    """
    if path is not None:
        return os.path.join(cwd, path)
    candidates = (os.path.join(cwd, name) for name in _CONFIG_FILES)
    return next((c for c in candidates if os.path.exists(c)), None)


def ports_in(text: str) -> list[int]:
    """
    The ports that a config's text seems to ask for, without parsing it.

    @param text: the config's JSONC text.
    @return: the value of every C{ListenPort} key (matched as the parser
        matches keys: case-insensitively, by C{casefold}) that is a port
        number, each once, in the file's order; these are
        C{Services[*].ListenPort}, C{OpenAiApi.ListenPort} and
        C{ManagementApi.ListenPort} in a good config.  None at all when the
        text may set a C{ListenAddress}: it has that key, or an escape that
        can stand for a letter (JSON5's C{\\u0041}, C{\\x41}, C{\\A}), with
        which a key can be spelled in other letters.
    """
    if _LETTER_ESCAPE.search(text):
        return []
    ports = []
    for match in _SCAN.finditer(text.casefold()):
        if match["address"]:
            return []
        digits = match["double"] or match["single"] or match["bare"]
        if digits is not None and 1 <= int(digits) <= 65535:
            ports.append(int(digits))
    return list(dict.fromkeys(ports))


def read_text(path: str) -> str:
    """
    The text of the file at C{path}, as the parser reads it; C{""} when it
    cannot be read (the parser will say why).
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def fail(what: str, problems: list[str]) -> NoReturn:
    """
    End lmproxy before it runs: say what is wrong, no traceback, exit 1.

    @param what: the first line, after C{lmproxy: }.
    @param problems: the lines below it, one problem each (indented).
    """
    sys.stderr.write(f"lmproxy: {what}\n")
    for problem in problems:
        sys.stderr.write(f"  {problem}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def fail_ports(problems: list[str]) -> NoReturn:
    """
    End lmproxy because ports cannot be opened: one line for one port
    (C{lmproxy: Services[2] ("Gemma-27B").ListenPort 8081: address already in use}).

    @param problems: one line per port (L{lmproxy.listen.sockets.PortsUnavailable}).
    """
    if len(problems) == 1:
        fail(problems[0], [])
    fail("ports cannot be opened:", problems)


def keep_tls_out(modules: dict[str, object] | None = None) -> bool:
    """
    Keep pyOpenSSL (and so cryptography and C{twisted.internet.ssl}) out of
    the process, if the reactor is not installed yet: lmproxy never speaks
    TLS, and Twisted's reactor and TCP modules import them only if pyOpenSSL
    can be imported (about 12 MiB resident for the process's whole life).
    Under C{twistd} this runs when lmproxy's options are parsed, before
    twistd installs the reactor.  Once a reactor runs (a test run, a program
    that embeds lmproxy) nothing changes: what it imported stays, and what
    it may still import is left alone.

    @param modules: C{sys.modules}, or a fake in tests.
    @return: whether pyOpenSSL is kept out.
    """
    if modules is None:
        modules = sys.modules  # type: ignore[assignment]
        assert modules is not None
    if "twisted.internet.reactor" in modules:
        return modules.get("OpenSSL", False) is None
    # A None entry makes "import OpenSSL" raise ImportError, which Twisted takes
    # for pyOpenSSL not installed.
    modules.setdefault("OpenSSL", None)
    return modules["OpenSSL"] is None
