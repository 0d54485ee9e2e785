"""Where the project keeps caches (never inside the repository) and the files it ships.

The default configs (``research/configs/``) and the embedded datasets
(``research/data/sets/``) are package data: :func:`package_path` finds them with
:mod:`importlib.resources`, so they are found the same way in a checkout, an editable install
and a wheel installed anywhere.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """``cache`` if given, else ``$RESEARCH_CACHE``, else ``~/.cache/research``."""
    if cache is None:
        cache = os.environ.get("RESEARCH_CACHE") or Path.home() / ".cache" / "research"
    return Path(cache).expanduser()


def package_path(*parts: str) -> Path:
    """The file or folder ``research/PARTS`` shipped with the package, as a path (pip installs
    packages as plain folders, so the resource is a real file that can be memory-mapped)."""
    return Path(str(files("research").joinpath(*parts)))
