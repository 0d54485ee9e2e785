"""Every example in the library's docstrings runs: each module of ``research`` with a
runnable one (not ``+SKIP``, which marks usage that needs a running server) is imported and
its doctests executed; a module whose optional dependency is missing here (verl's agent
loop) is reported as skipped, not passed."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import research

ROOT = Path(research.__file__).parent


def modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages([str(ROOT)], prefix="research."):
        path = ROOT.joinpath(*info.name.split(".")[1:])
        source = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
        lines = source.read_text(encoding="utf-8").splitlines() if source.is_file() else []
        if any(">>>" in line and "+SKIP" not in line for line in lines):  # runnable ones
            names.append(info.name)
    return sorted(names)


MODULES = modules_with_examples()


def test_the_examples_are_found():
    assert len(MODULES) >= 10, MODULES  # the walk itself works (a broken one finds none)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        pytest.skip(f"{name} needs an optional dependency: {e}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
