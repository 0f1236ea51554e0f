"""
Integration tests: a service's C{Command} and C{Args} are exec'd directly,
never through a shell.  A real process prints the argv it got; shell syntax
in Args (C{;}, C{$(...)}, backticks, globs, redirections, variables) reaches
it as literal words, and runs nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from lmproxy.config import ServiceConfig
from lmproxy.core.process import ServiceProcess, StartError
from lmproxy.core.shell import Reactor
from tests.harness import wait_for

# Prints its arguments as JSON: what the program was really given.
PRINT_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"

# Args as someone would write them for a shell: each part would make a shell
# run, create or expand something.
SHELL_ARGS = (
    "a; touch semicolon $(touch dollar) `touch backtick` * ? > redirected"
    " | tee piped && $HOME ~ ${PATH} & 'a; touch quoted' \"$(touch dq)\""
)
# What the program must get: the words, split as a shell splits them
# (quotes removed), and nothing else done.
WORDS = [
    "a;",
    "touch",
    "semicolon",
    "$(touch",
    "dollar)",
    "`touch",
    "backtick`",
    "*",
    "?",
    ">",
    "redirected",
    "|",
    "tee",
    "piped",
    "&&",
    "$HOME",
    "~",
    "${PATH}",
    "&",
    "a; touch quoted",
    "$(touch dq)",
]


class ArgsNoShellTests(TestCase):
    """C{Command Args} run as one program with its words, in a real process."""

    def setUp(self) -> None:
        self.work_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.work_dir)
        # A file for a glob to find, were there a shell.
        open(os.path.join(self.work_dir, "present"), "w").close()
        self.log_file = os.path.join(self.work_dir, "service.log")

    def printed(self) -> str:
        with open(self.log_file) as f:
            return f.read()

    def process(self, command: str, args: str) -> ServiceProcess:
        config = ServiceConfig(
            name="argv",
            command=command,
            args=args,
            proxy_target_port=1,
            work_dir=self.work_dir,
            log_file_path=self.log_file,
        )
        return ServiceProcess(reactor_typed(), config, output_logs=False)

    async def test_shell_syntax_stays_literal(self) -> None:
        args = shlex.join(["-c", PRINT_ARGV]) + " " + SHELL_ARGS
        process = self.process(sys.executable, args)
        process.spawn()
        await process.when_exited()
        await wait_for(lambda: self.printed().endswith("\n"), 30, "the argv printed")
        self.assertEqual(json.loads(self.printed()), WORDS)
        self.assertEqual(sorted(os.listdir(self.work_dir)), ["present", "service.log"])

    def test_command_is_one_program(self) -> None:
        """A Command with shell syntax is the name of a program, which does not exist."""
        process = self.process("true; touch ran", "")
        error = self.assertRaises(StartError, process.spawn)
        self.assertIn("was not found on PATH", str(error))
        self.assertEqual(os.listdir(self.work_dir), ["present"])


def reactor_typed() -> Reactor:
    """The global reactor, as the type L{ServiceProcess} takes."""
    return reactor  # type: ignore[return-value]
