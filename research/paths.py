"""Where the project keeps caches (never inside the repository)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """``cache`` if given, else ``$RESEARCH_CACHE``, else ``~/.cache/research``."""
    if cache is None:
        cache = os.environ.get("RESEARCH_CACHE") or Path.home() / ".cache" / "research"
    return Path(cache).expanduser()


def repo_root() -> Path:
    """The source checkout that holds this package (data/, rag_serving/, ...)."""
    return Path(__file__).resolve().parent.parent
