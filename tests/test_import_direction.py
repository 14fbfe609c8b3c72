"""Imports flow one way: `api` and `producer` import the core (`voxq`), never `workers`.

Every import statement in those packages is read from the source (AST, function-level ones
included). One that has to cross for a while is listed in KNOWN with what keeps it there (none
does now); the list may only shrink: an entry that no longer occurs fails the test too, so it
is removed when its import goes.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "producer")

#: (file, imported module) → why it still crosses (to be moved into the core)
KNOWN: dict[tuple[str, str], str] = {}


def crossing_imports() -> set[tuple[str, str]]:
    """(file, module) of every import of `workers` in the packages."""
    found: set[tuple[str, str]] = set()
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    if name == "workers" or name.startswith("workers."):
                        found.add((rel, name))
    return found


def test_api_and_producer_never_import_workers() -> None:
    found = crossing_imports()
    new = sorted(found - set(KNOWN))
    assert not new, f"api/producer import workers (import the core instead): {new}"


def test_the_known_exceptions_still_exist() -> None:
    gone = sorted(set(KNOWN) - crossing_imports())
    assert not gone, f"no longer imported; remove from KNOWN: {gone}"

