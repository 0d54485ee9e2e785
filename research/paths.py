"""Where the project keeps caches (never inside the repository)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$RESEARCH_CACHE``, else ``~/.cache/research``."""
    return Path(os.environ.get("RESEARCH_CACHE") or Path.home() / ".cache" / "research")


def repo_root() -> Path:
    """The source checkout that holds this package (data/, rag_serving/, ...)."""
    return Path(__file__).resolve().parent.parent
