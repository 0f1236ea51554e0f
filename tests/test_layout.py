"""
The shape of the package, as README's Development section draws it: the
rooms import one way, and no module outgrows one job.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.harness import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "lmproxy"
SHARED = {
    "lmproxy.logs",
    "lmproxy.lines",
    "lmproxy.timers",
    "lmproxy.openai_errors",
    "lmproxy.requeststats",
    "lmproxy.apishared",
}
# What each room may import of lmproxy, besides itself.
ALLOWED = {
    "lmproxy.interfaces": set(),
    "lmproxy.config": set(),
    "lmproxy.core": {"lmproxy.config", "lmproxy.interfaces", "lmproxy.compat", *SHARED},
    "lmproxy.listen": {"lmproxy.config", "lmproxy.interfaces", "lmproxy.compat", *SHARED},
    "lmproxy.manage": {"lmproxy.config", "lmproxy.interfaces", *SHARED},
    "lmproxy.demo": SHARED,
    "lmproxy.testing": {"lmproxy.config", "lmproxy.interfaces"},
    "lmproxy.reload": {"lmproxy.config", "lmproxy.interfaces", "lmproxy.listen", *SHARED},
    **{shared: set() for shared in SHARED},
    "lmproxy.apishared": {"lmproxy.logs", "lmproxy.timers"},
    "lmproxy.compat": set(),
}
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The lmproxy modules that the module at C{path} imports (at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "lmproxy" or name.startswith("lmproxy.")}


def _room(module: str) -> str | None:
    """The key of L{ALLOWED} that C{module} belongs to."""
    for room in sorted(ALLOWED, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return None


class LayoutTests(SynchronousTestCase):
    def test_imports_point_one_way(self) -> None:
        """Each room imports only what README's map allows it (tap.py imports everything)."""
        wrong = []
        for path in sorted(PACKAGE.rglob("*.py")):
            module = _module_name(path)
            room = _room(module)
            if room is None:
                continue  # the composition root and the scripts
            for imported in _imports(path):
                target = _room(imported) or imported
                if target != room and target not in ALLOWED[room]:
                    wrong.append(f"{module} imports {imported}")
        self.assertEqual(wrong, [])

    def test_no_production_module_imports_testing(self) -> None:
        users = [
            _module_name(path)
            for path in PACKAGE.rglob("*.py")
            if not _module_name(path).startswith("lmproxy.testing")
            and any(name.startswith("lmproxy.testing") for name in _imports(path))
        ]
        self.assertEqual(users, [])

    def test_every_package_is_installed(self) -> None:
        """pyproject.toml lists every package, so that an installed copy has them all."""
        with open(PROJECT_ROOT / "pyproject.toml", "rb") as f:
            listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
        packages = {
            _module_name(path.parent / "__init__.py") for path in PACKAGE.rglob("__init__.py")
        }
        self.assertEqual(packages - listed, set())

    def test_modules_are_small(self) -> None:
        """No module under lmproxy/ is over L{MAX_LINES} lines."""
        large = [
            f"{path.relative_to(PROJECT_ROOT)}: {lines} lines"
            for path in sorted(PACKAGE.rglob("*.py"))
            if (lines := len(path.read_text().splitlines())) > MAX_LINES
        ]
        self.assertEqual(large, [])

    def test_the_check_sees_the_rooms(self) -> None:
        """The map covers every package (a new room must be added to it)."""
        packages = {_module_name(p.parent / "__init__.py") for p in PACKAGE.glob("*/__init__.py")}
        self.assertEqual(packages - set(ALLOWED), set())
        self.assertIn("lmproxy.config", _imports(PACKAGE / "core" / "supervisor.py"))
