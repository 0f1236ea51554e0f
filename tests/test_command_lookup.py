"""
Tests for L{lmproxy.core.process.resolve_command}: how a service's C{Command}
is found, C{PATH} first, then beside lmproxy's own interpreter (the scripts
of a venv that is not activated).
"""

from __future__ import annotations

import os
import stat
import sys

from twisted.trial.unittest import SynchronousTestCase

from lmproxy.core.process import StartError, resolve_command


def executable(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(path, stat.S_IRWXU)
    return path


class LookupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.on_path = os.path.abspath(self.mktemp())
        self.venv_bin = os.path.abspath(self.mktemp())
        os.makedirs(self.on_path)
        os.makedirs(self.venv_bin)
        self.patch(os, "environ", {**os.environ, "PATH": self.on_path})
        self.patch(sys, "executable", os.path.join(self.venv_bin, "python3"))

    def test_path_first(self) -> None:
        first = executable(self.on_path, "tool")
        executable(self.venv_bin, "tool")
        self.assertEqual(resolve_command("tool", None), first)

    def test_beside_the_interpreter(self) -> None:
        """A venv's console script is found though the venv is not on PATH."""
        script = executable(self.venv_bin, "lmproxy-demo")
        self.assertEqual(resolve_command("lmproxy-demo", None), script)

    def test_nowhere(self) -> None:
        error = self.assertRaises(StartError, resolve_command, "no-such-tool", None)
        self.assertIn(f"was not found on PATH nor in {self.venv_bin}", str(error))
