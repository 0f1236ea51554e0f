"""
Small pieces on the way of every spawn and of start-up:
L{lmproxy.compat.process.ignored_signals} (what Twisted resets in a spawned
child, asked in one read), L{lmproxy.core.process.split_args} (cached), and
L{lmproxy.launch.keep_tls_out} (pyOpenSSL kept out of twistd's process).
"""

from __future__ import annotations

import signal
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from lmproxy.compat.process import ignored_signals
from lmproxy.core.process import StartError, split_args
from lmproxy.launch import keep_tls_out


class IgnoredSignalsTests(SynchronousTestCase):
    """The kernel's mask says what C{signal.getsignal} says, signal by signal."""

    def asked(self) -> list[int]:
        return [n for n in range(1, signal.NSIG) if signal.getsignal(n) == signal.SIG_IGN]

    def test_as_getsignal_says(self) -> None:
        """Ignoring one more signal, and restoring it: both ways agree each time."""
        before = signal.getsignal(signal.SIGUSR2)
        self.addCleanup(signal.signal, signal.SIGUSR2, before)
        self.assertEqual(ignored_signals(), self.asked())
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        self.assertIn(signal.SIGUSR2, ignored_signals())
        self.assertEqual(ignored_signals(), self.asked())
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        self.assertNotIn(signal.SIGUSR2, ignored_signals())
        self.assertEqual(ignored_signals(), self.asked())

    def test_the_c_library_s_own(self) -> None:
        """Signals 32 and 33 (glibc's own), inherited ignored: left out, as getsignal does."""
        status = self.mktemp()
        with open(status, "w") as f:
            f.write("Name:\tx\nSigIgn:\t0000000180001000\n")  # 13, 32 and 33
        self.assertEqual(ignored_signals(status), [13])

    def test_without_proc(self) -> None:
        """No such file (not Linux): each signal is asked."""
        self.assertEqual(ignored_signals(self.mktemp()), self.asked())


class SplitArgsCacheTests(SynchronousTestCase):
    """Each call gets its own list; a bad Args fails every time."""

    def test_own_list(self) -> None:
        first = split_args("-m a.gguf")
        first.append("changed")
        self.assertEqual(split_args("-m a.gguf"), ["-m", "a.gguf"])

    def test_error_every_time(self) -> None:
        for _ in range(2):
            self.assertRaises(StartError, split_args, "it's")


class KeepTlsOutTests(SynchronousTestCase):
    """pyOpenSSL kept out only before a reactor is installed."""

    def test_before_the_reactor(self) -> None:
        """Not imported yet, no reactor: kept out, and Twisted's TCP imports without it."""
        modules: dict[str, object] = {}
        self.assertTrue(keep_tls_out(modules))
        self.assertIsNone(modules["OpenSSL"])

    def test_reactor_running(self) -> None:
        """A reactor installed (this test run's): nothing changes."""
        modules: dict[str, object] = {"twisted.internet.reactor": object()}
        self.assertFalse(keep_tls_out(modules))
        self.assertNotIn("OpenSSL", modules)
        imported = object()
        modules["OpenSSL"] = imported
        self.assertFalse(keep_tls_out(modules))
        self.assertIs(modules["OpenSSL"], imported)

    def test_in_a_fresh_process(self) -> None:
        """Then the reactor, TCP and endpoints import without pyOpenSSL and cryptography."""
        script = (
            "import sys\n"
            "from lmproxy.launch import keep_tls_out\n"
            "assert keep_tls_out()\n"
            "from twisted.internet import reactor, endpoints, tcp\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('OpenSSL', 'cryptography') and sys.modules[m] is not None))\n"
        )
        ran = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
        self.assertEqual((ran.returncode, ran.stdout.strip()), (0, "[]"), ran.stderr)
