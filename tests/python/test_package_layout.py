"""The package's layering rules, checked on its sources: the library never imports the
experiment harness (only the command line reaches both), and no module outgrows one concept."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "blindfed"
#: The longest a module may grow before it is split into modules of one concept each.
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_never_imports_the_experiment_harness() -> None:
    harness, command_line = PACKAGE / "experiments", PACKAGE / "cli"
    library = [p for p in _modules() if not p.is_relative_to(harness)]
    library = [p for p in library if not p.is_relative_to(command_line)]
    assert len(library) > 40  # the walk found the package
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(n for n in _imported(p) if "blindfed.experiments" in n)
        for p in library
    }
    assert {p: n for p, n in offenders.items() if n} == {}


def test_no_module_is_longer_than_one_concept() -> None:
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in _modules()}
    assert {p: n for p, n in lengths.items() if n > MAX_LINES} == {}
