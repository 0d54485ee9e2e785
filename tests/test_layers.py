"""The package's floors: a lower room never imports a higher one. Read from the source (every
``import`` and ``from ... import``, at any depth, deferred ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import research

ROOT = Path(research.__file__).parent

# what each room may import from the project, beside itself (the leaves first)
ALLOWED = {
    "models": {"research.paths", "research.errors"},
}


def project_imports(room: str) -> dict[str, set[str]]:
    """``{file: {imported research modules}}`` of every module in ``research/<room>``."""
    out = {}
    for path in sorted((ROOT / room).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = {n for n in names if n.startswith("research")}
    return out


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_a_leaf_imports_nothing_above_it(room):
    own = f"research.{room}"
    found = {f: {n for n in names if not (n == own or n.startswith(own + "."))
                 and n not in ALLOWED[room]}
             for f, names in project_imports(room).items()}
    assert not {f: n for f, n in found.items() if n}, found
    assert project_imports(room)  # the walk found the room's files


def test_the_walk_sees_deferred_imports(tmp_path, monkeypatch):
    (tmp_path / "leaf").mkdir()
    (tmp_path / "leaf" / "m.py").write_text("def f():\n    from research.rollout import x\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert project_imports("leaf") == {"leaf/m.py": {"research.rollout"}}
