"""The package's floors: no room imports a room above it, and ``research.models`` is a leaf.
Read from the source (every ``import`` and ``from ... import``, at any depth, deferred ones
included), so an import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import research

ROOT = Path(research.__file__).parent

# each room (a subpackage, or a module directly under research/) and its floor: a room may
# import its own floor and those below, never one above
FLOORS = {
    "errors": 0, "paths": 0, "protocol": 0, "http": 0, "metrics": 0, "configtree": 0,
    "behaviour": 1, "rewards": 1, "data": 1, "models": 1, "retrieval": 1,
    "serving": 2, "rollout": 2,
    "evaluation": 3, "report": 3,
    "trainers": 4,
    "quickstart": 5,
    "cli": 6,
}
LEAVES = {"models": {"errors", "paths"}}  # what a leaf may import beside itself


def rooms_imported() -> dict[str, dict[str, set[str]]]:
    """``{room: {file: {rooms it imports}}}`` over every module of the package."""
    out: dict[str, dict[str, set[str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        room = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        rooms = {n.split(".")[1] for n in names if n.startswith("research.")}
        out.setdefault(room, {})[str(rel)] = {r for r in rooms if r in FLOORS and r != room}
    return out


def test_every_room_has_a_floor():
    assert set(rooms_imported()) <= set(FLOORS), set(rooms_imported()) - set(FLOORS)


def test_no_room_imports_a_room_above_it():
    upward = {f"{file} ({room}, floor {FLOORS[room]})": sorted(
                  f"{r} (floor {FLOORS[r]})" for r in imported if FLOORS[r] > FLOORS[room])
              for room, files in rooms_imported().items() for file, imported in files.items()}
    assert not {k: v for k, v in upward.items() if v}


@pytest.mark.parametrize("room", sorted(LEAVES))
def test_a_leaf_imports_only_what_it_may(room):
    files = rooms_imported()[room]
    assert files and all(imported <= LEAVES[room] for imported in files.values()), files


def test_the_walk_sees_deferred_imports(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.py").write_text("def f():\n    from research.rollout import x\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert rooms_imported() == {"models": {"models/m.py": {"rollout"}}}
