"""
Tests of L{lmproxy.fdlimit}, each in a child Python whose limits it sets
first (lowering this process's own limits could starve the test run).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import child_env

_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
from lmproxy.fdlimit import raise_fd_limit
print(json.dumps([raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)]))
"""


def _run(soft: int, hard: int) -> list[list[int]]:
    output = subprocess.run(
        [sys.executable, "-c", _CHILD, str(soft), str(hard)],
        env=child_env(),
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    result: list[list[int]] = json.loads(output)
    return result


class RaiseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
        if self.hard == resource.RLIM_INFINITY or self.hard < 128:
            self.skipTest("needs a finite hard limit of at least 128 descriptors")

    def test_soft_raised_to_hard(self) -> None:
        self.assertEqual(_run(64, self.hard), [[64, self.hard], [self.hard, self.hard]])

    def test_already_at_the_hard_limit(self) -> None:
        """A low hard limit is the administrator's: it stays, and nothing is said to change."""
        self.assertEqual(_run(64, 64), [[64, 64], [64, 64]])
