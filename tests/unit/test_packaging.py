"""The runtime package ships without the test drivers, and nothing in it needs them."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "shoal"
PYPROJECT = SRC.parents[1] / "pyproject.toml"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


class TestPackaging:
    """shoal.testing is excluded from the wheel (the image); the rest never imports it."""

    def test_wheel_excludes_the_test_drivers(self) -> None:
        config = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
        assert {"shoal.testing", "shoal.testing.*"} <= set(config["packages"]["find"]["exclude"])
        assert config["include-package-data"] is False

    def test_runtime_modules_do_not_import_shoal_testing(self) -> None:
        offenders = {
            str(path.relative_to(SRC)): sorted(m for m in imported_modules(path) if m.startswith("shoal.testing"))
            for path in SRC.rglob("*.py")
            if "testing" not in path.relative_to(SRC).parts
        }
        assert {k: v for k, v in offenders.items() if v} == {}
