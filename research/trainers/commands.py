"""``research train``: GRPO with the TRL engine, from a YAML config and ``key=value`` overrides.

``register(subparsers)`` adds::

    research train [--config FILE|NAME] [section.key=value ...] [--resume] [--keys]

``--config`` is a YAML file or a named config of ``training/configs`` (default ``cpu-small``).
Expected failures (a bad config, nothing to resume, a missing file or package) print one line
on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_OK = 0
EXIT_FAILED = 2
DEFAULT_CONFIG = "cpu-small"

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``train`` command to ``subparsers``."""
    p = subparsers.add_parser(
        "train", help="GRPO training on one machine (TRL)",
        description="GRPO with TRL and the ReSearch rollout. Keys and their help: --keys.")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. grpo.num_generations=4 run.max_steps=10")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"YAML file or named config (cpu-small, original; default "
                        f"{DEFAULT_CONFIG})")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in run.output_dir")
    p.add_argument("--keys", action="store_true", help="list every config key and exit")
    p.set_defaults(func=run_train)
    return p


def _expected_errors() -> tuple[type[BaseException], ...]:
    from research.models.prepare import ModelError
    from research.retrieval.client import SearchError
    from research.trainers.config import ConfigError

    return (ConfigError, ModelError, SearchError, FileNotFoundError, ImportError, ValueError,
            TimeoutError)


def run_train(args: argparse.Namespace) -> int:
    from research.trainers.config import describe, load_config

    if args.keys:
        print(describe())
        return EXIT_OK
    try:
        overrides = [*args.overrides, *(["run.resume=true"] if args.resume else [])]
        config = load_config(args.config, overrides)
        from research.trainers.trl_engine import train

        out = train(config)
    except _expected_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"run directory: {out}")
    return EXIT_OK
