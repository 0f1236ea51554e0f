"""
The dashboard's ES modules (L{lmproxy.manage.dashboard}): their unit tests in
C{tests/js} under node's own test runner, the service states they know against
L{ServiceState}, and how the management API serves them.

Node is needed for the first two: without it they skip, except in CI (the
environment variable C{CI} is set), where C{.ci/run} installs it and a missing
node is a failure.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tomllib
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import FailTest, SkipTest, TestCase

from lmproxy.interfaces import ServiceState
from tests.harness import HTML_SINKS, PROJECT_ROOT
from tests.test_management import ApiCase

DASHBOARD = PROJECT_ROOT / "lmproxy" / "manage" / "dashboard"
JS_TESTS = PROJECT_ROOT / "tests" / "js"
JS_TYPE = "text/javascript; charset=utf-8"
# Static imports and re-exports: `import {a} from "./a.js"`, `export * from "./b.js"`.
_IMPORT = re.compile(r"""^\s*(?:import|export)\b[^'"]*?\bfrom\s*["']([^"']+)["']""", re.M | re.S)
_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


def modules() -> list[Path]:
    """The dashboard's ES modules, by name."""
    return sorted(DASHBOARD.glob("*.js"))


def node() -> str:
    """
    The path of C{node}; skips when it is missing, or fails in CI.

    @raise SkipTest: node is not installed and C{CI} is not set.
    @raise FailTest: node is not installed and C{CI} is set.
    """
    found = shutil.which("node")
    if found is None:
        message = "node is not installed (apt-get install nodejs)"
        if os.environ.get("CI"):
            raise FailTest(f"{message}: .ci/run must install it")
        raise SkipTest(message)
    return found


async def run_node(*args: str) -> tuple[int, str, str]:
    """Run node in the project root; its exit code, standard output and error."""
    out, err, code = await getProcessOutputAndValue(
        node(), args, env=dict(os.environ), path=str(PROJECT_ROOT), reactor=reactor
    )
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


class NodeTests(TestCase):
    """What node runs: the unit tests, and the states of C{states.js}."""

    timeout = 120

    async def test_unit_tests_pass(self) -> None:
        """C{node --test} passes every test file of C{tests/js}."""
        files = sorted(str(p.relative_to(PROJECT_ROOT)) for p in JS_TESTS.glob("*.test.mjs"))
        self.assertTrue(files, "no tests in tests/js")
        code, out, err = await run_node("--test", *files)
        self.assertEqual(code, 0, out + err)

    async def test_states_are_the_service_states(self) -> None:
        """The dashboard knows the states of L{ServiceState}, in their order."""
        script = (
            "const { pathToFileURL } = await import('node:url');"
            "const states = await import(pathToFileURL(process.argv[1]));"
            "console.log(JSON.stringify(states.SERVICE_STATES));"
        )
        code, out, err = await run_node(
            "--input-type=module", "-e", script, str(DASHBOARD / "states.js")
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), [s.value for s in ServiceState])


class ModuleFilesTests(ApiCase):
    """The modules as files: served, complete, installed, and written the house way."""

    def test_every_module_is_served_as_javascript(self) -> None:
        self.assertIn("app.js", [p.name for p in modules()])
        for path in modules():
            response, body = self.client.request("GET", f"/dashboard/{path.name}")
            self.assertEqual(response.code, 200, path.name)
            self.assertEqual(response.headers.getRawHeaders("content-type"), [JS_TYPE])
            self.assertEqual(response.headers.getRawHeaders("x-content-type-options"), ["nosniff"])
            self.assertEqual(body, path.read_bytes())

    def test_other_names_are_not_found(self) -> None:
        for name in ["package.json", "missing.js", "index.html", "__init__.py", "APP.JS"]:
            self.client.json("GET", f"/dashboard/{name}", 404)

    def test_imports_name_served_modules(self) -> None:
        """Every import is relative and names a module that is served: no library, no URL."""
        names = {p.name for p in modules()}
        for path in modules():
            for specifier in _IMPORT.findall(path.read_text(encoding="utf-8")):
                self.assertTrue(specifier.startswith("./"), f"{path.name}: {specifier}")
                self.assertIn(specifier[2:], names, f"{path.name}: {specifier}")

    def test_no_module_parses_data_as_html(self) -> None:
        """The DOM is built with textContent and Text nodes only, in every module."""
        for path in modules():
            code = _COMMENTS.sub("", path.read_text(encoding="utf-8"))
            for sink in HTML_SINKS:
                self.assertNotIn(sink, code, path.name)

    def test_house_style(self) -> None:
        """A header comment per module, JSDoc on each exported function, small modules."""
        for path in modules():
            lines = path.read_text(encoding="utf-8").splitlines()
            self.assertTrue(lines[0].startswith("// "), f"{path.name}: no header comment")
            self.assertLessEqual(len(lines), 250, path.name)
            for i, line in enumerate(lines):
                if re.match(r"export (async )?function ", line):
                    self.assertEqual(lines[i - 1].strip(), "*/", f"{path.name}:{i + 1}: no JSDoc")

    def test_package_data_installs_every_file(self) -> None:
        """C{pip install .} copies every file the dashboard serves."""
        pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        patterns = pyproject["tool"]["setuptools"]["package-data"]["lmproxy.manage.dashboard"]
        served = [p.name for p in DASHBOARD.iterdir() if p.suffix in {".js", ".css", ".svg"}]
        for name in [*served, "index.html"]:
            self.assertTrue(any(fnmatch.fnmatch(name, p) for p in patterns), name)
