"""The project's error classes and how the command lines report them.

Every error a user can cause and fix (a bad config, a missing index, a malformed data file, a
service that cannot be reached, a missing optional dependency) is a :class:`ResearchError`,
whose message says what is wrong and how to fix it. The project's other error classes derive
from it as well as from the built-in class they always had (``ConfigError`` is still a
``ValueError``, ``SearchError`` a ``RuntimeError``), so code that catches those still does.

Nothing here imports anything heavy.
"""

from __future__ import annotations


class ResearchError(Exception):
    """An error the user can fix; the message says how. The CLIs print it in one line."""


class ConfigError(ResearchError, ValueError):
    """A setting that cannot work (a config key, a command-line value, an unknown name);
    the message says how to fix it."""


class MissingDependency(ResearchError, ImportError):
    """An optional dependency is not installed; the message gives the install command."""
