"""
How the parser reports what is wrong: L{ConfigError}, and L{At}, the place of
a value in the config together with the list its problems go to.

Every problem names where it is, e.g.
C{Services[2] ("Gemma-27B").ResourceRequirements: ...}; the parser collects
them all and raises one L{ConfigError} at the end, so that a user fixes a
config in one go.
"""

from __future__ import annotations

import json
import re

from attrs import field, frozen

# What json.dumps leaves raw but would break a problem's line or a terminal:
# DEL and the C1 controls, the line and paragraph separators, lone surrogates.
_RAW = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class ConfigError(Exception):
    """
    The config cannot be used.

    @ivar problems: every reason, each starting with where it is.
    """

    def __init__(self, problems: list[str]) -> None:
        """
        @param problems: every reason, each starting with where it is; the
            message of the exception is one reason a line.
        """
        super().__init__("\n".join(problems))
        self.problems = problems


def quote(name: str) -> str:
    """
    Quote a name chosen by the user (a service, a resource) for a message.

    @param name: the name.
    @return: C{name} as a JSON string on one line, non-ASCII letters kept as
        they are, control characters escaped.
    """
    return _RAW.sub(lambda m: f"\\u{ord(m[0]):04x}", json.dumps(name, ensure_ascii=False))


@frozen(eq=False)
class At:
    """
    Where a value is in the config, and the list its problems go to.

    @ivar path: the path of the value, e.g. C{OpenAiApi.ListenPort}; C{""} for
        the top level.
    @ivar problems: (group, message) pairs, shared by every L{At} derived from
        the same root.
    @ivar group: orders the problems: 0 for anything outside C{Services}, then
        one group per service, so that each service's problems are listed
        together (in the order they were found).
    @ivar warnings: what loads but deserves a line in the log (something
        large-model-proxy accepts that cannot work as written), shared like
        C{problems}.
    """

    path: str
    problems: list[tuple[int, str]]
    group: int = 0
    warnings: list[str] = field(factory=list)

    def _at(self, path: str, group: int | None = None) -> At:
        return At(path, self.problems, self.group if group is None else group, self.warnings)

    def key(self, key: str) -> At:
        """
        @param key: the name of a key of the object at this place.
        @return: the place of that key's value (a key that cannot be shown
            as it is, such as an unknown one with control characters, is
            quoted).
        """
        key = key if key.isprintable() else quote(key)
        return self._at(f"{self.path}.{key}" if self.path else key)

    def index(self, index: int) -> At:
        """
        @param index: a position in the list at this place.
        @return: the place of that element.
        """
        return self._at(f"{self.path}[{index}]")

    def service(self, index: int, name: str | None) -> At:
        """
        @param index: the position of a service in C{Services}.
        @param name: the service's name, or C{None} when it has none (yet).
        @return: the place of that service, labelled with its name when it
            has one, and starting a problem group of its own.
        """
        label = f" ({quote(name)})" if name else ""
        return self._at(f"{self.path}[{index}]{label}", group=index + 1)

    def name(self, name: str) -> At:
        """
        @param name: a key chosen by the user (a resource name) in the map at
            this place.
        @return: the place of that entry.
        """
        return self._at(f"{self.path}[{quote(name)}]")

    def problem(self, message: str) -> None:
        """
        Report a problem of the value at this place.

        @param message: what is wrong, without the place.
        """
        self.problems.append((self.group, f"{self.path or 'top level'}: {message}"))

    def warning(self, message: str) -> None:
        """
        Report something that loads, but that the user should hear about.

        @param message: what is odd, without the place.
        """
        self.warnings.append(f"{self.path or 'top level'}: {message}")

    def messages(self) -> list[str]:
        """
        @return: every problem reported so far, each group together, the
            groups in file order.
        """
        # A stable sort keeps the order in which each group's problems were found.
        return [message for _, message in sorted(self.problems, key=lambda p: p[0])]
