"""Every example in the library's docstrings runs: each module of ``research`` with a
runnable one (not ``+SKIP``, which marks usage that needs a running server) is imported and
its doctests executed; a module whose optional dependency is missing here (verl's agent
loop) is reported as skipped, not passed. Only the named optional dependencies may skip: any
other ImportError is a broken module and fails."""

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

# the optional dependencies a module with examples may lack here (installed in their own
# environments: .venv-verl runs verl's agent loop); any other missing import is a failure
OPTIONAL = {"verl", "ray", "vllm", "flashrag", "faiss"}


def test_the_examples_are_found():
    assert len(MODULES) >= 10, MODULES  # the walk itself works (a broken one finds none)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        top = (e.name or "").split(".")[0]
        if top not in OPTIONAL:
            pytest.fail(f"{name} does not import ({e}); only {sorted(OPTIONAL)} may be absent")
        pytest.skip(f"{name} needs the optional dependency {top}: {e}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_an_import_error_outside_the_optional_dependencies_fails(monkeypatch):
    def broken(name):
        raise ModuleNotFoundError("No module named 'yaml'", name="yaml")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(pytest.fail.Exception, match="only .* may be absent"):
        test_doctests("research.protocol")
