"""
Verified fakes for lmproxy's tests: fake backends for the listeners and the
management API, and a fake process reactor for the core.  No production
module imports this package.
"""

from lmproxy.testing.backends import FakeBackends, FakeLease, ScriptedBackends
from lmproxy.testing.processes import FakeProcess, MemoryProcessReactor, QuickExit

__all__ = [
    "FakeBackends",
    "FakeLease",
    "FakeProcess",
    "MemoryProcessReactor",
    "QuickExit",
    "ScriptedBackends",
]
