"""``research train``: GRPO with the TRL engine, from a YAML config and ``key=value`` overrides.

``register(subparsers)`` adds::

    research train [--config FILE|NAME] [section.key=value ...] [--resume] [--keys]

``--config`` is a YAML file or a named config shipped with the package
(``research/configs/training/NAME.yaml``; default ``cpu-small``).
Expected failures (a bad config, nothing to resume, a missing file or package: see
:func:`research.errors.cli_command`) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging

from research.errors import cli_command

EXIT_OK = 0

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``train`` command to ``subparsers``."""
    p = subparsers.add_parser(
        "train", help="GRPO training on one machine (TRL)",
        description="GRPO with TRL and the ReSearch rollout. Keys and their help: --keys.")
    from research.trainers.run_setup import add_front_door

    add_front_door(p, "trl")
    p.add_argument("--keys", action="store_true", help="list every config key and exit")
    p.set_defaults(func=run_train)
    return p


@cli_command
def run_train(args: argparse.Namespace) -> int:
    from research.trainers.config import describe, load_run_config

    if args.keys:
        print(describe())
        return EXIT_OK
    config = load_run_config(args.config, args.overrides, args.resume, "trl")
    from research.trainers.trl_engine import train

    print(f"run directory: {train(config)}")
    return EXIT_OK
