"""
The demo process starts light: what C{python -m lmproxy.demo} imports before it
listens (no timing: which modules), and that importing its entry point changes
nothing in the importing process.
"""

from __future__ import annotations

import importlib
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.harness import PROJECT_ROOT, child_env

# Runs the demo as `python -m lmproxy.demo` does, then names the modules it loaded.
_SCRIPT = """
import sys
from lmproxy.demo.main import main
try:
    status = main(sys.argv[1:])
except SystemExit as e:  # --help, a bad command line
    status = e.code
print("MODULES", " ".join(sorted(n for n, m in sys.modules.items() if m is not None)))
sys.exit(status)
"""

# Klein and treq are slow to import; pyOpenSSL (and cryptography) the reactor
# imports only if it finds them, and the demo never speaks TLS.
HEAVY = ("klein", "treq", "OpenSSL", "cryptography", "twisted.internet.ssl", "werkzeug")


async def _run(*args: str) -> tuple[int, list[str], set[str]]:
    """
    Run the demo with C{args}; its exit status, its other stdout lines, the
    modules it had loaded at its end.
    """
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-c", _SCRIPT, *args],
        env=child_env(),
        path=str(PROJECT_ROOT),
        reactor=reactor,
    )
    lines = out.decode("utf-8", "replace").splitlines()
    modules = [line for line in lines if line.startswith("MODULES ")]
    assert len(modules) == 1, (code, lines, err.decode("utf-8", "replace"))
    others = [line for line in lines if not line.startswith("MODULES ")]
    return code, others, set(modules[0].split()[1:])


class StartupImportTests(TestCase):
    """
    What the real demo process imports.
    """

    timeout = 60

    async def test_no_heavy_imports(self) -> None:
        """
        A demo that listened and exited has loaded no Klein, no treq and no TLS.
        """
        code, lines, modules = await _run("--port", "0", "--exit-after", "0")
        self.assertEqual(code, 0, lines)
        self.assertIn("listening on", lines[0])
        self.assertIn("twisted.web.server", modules)
        self.assertEqual([name for name in HEAVY if name in modules], [])

    async def test_help_without_twisted(self) -> None:
        """
        The command line is checked before Twisted is imported: C{--help} is fast.
        """
        code, lines, modules = await _run("--help")
        self.assertEqual(code, 0)
        self.assertTrue(lines[0].startswith("usage: python -m lmproxy.demo"), lines)
        self.assertNotIn("twisted.internet.reactor", modules)
        self.assertNotIn("twisted.web.server", modules)


class ImportSideEffectTests(SynchronousTestCase):
    """
    Importing the entry point keeps the importer's process as it was.
    """

    def test_openssl_untouched(self) -> None:
        """
        Only running L{lmproxy.demo.main.main} keeps pyOpenSSL out, not importing it.
        """
        import lmproxy.demo.main

        before = sys.modules.get("OpenSSL", "absent")
        importlib.reload(lmproxy.demo.main)  # runs its module-level code again
        self.assertIs(sys.modules.get("OpenSSL", "absent"), before)
