"""The ``research data`` subcommands and the shared options of ``data_preprocess_hpqa.py``.

``register(subparsers)`` adds::

    research data hotpotqa --train hotpot_train_v1.1.json --dev hotpot_dev_fullwiki_v1.json \
        --out DIR [--full-dev] [--dev-size 100] [--seed 42]
    research data flashrag --input FILE.jsonl --name NAME --out FILE.parquet \
        [--sample N] [--seed 42] [--keep-metadata]

Each handler is stored as the parser's ``func`` default (what ``research.cli`` calls) and
returns an exit code: 0 on success, 2 on bad input (a message on stderr, no traceback:
:func:`research.errors.cli_command`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from research.data.flashrag import DEFAULT_SEED, convert_flashrag
from research.data.hotpotqa import DEFAULT_DEV_SIZE, convert_hotpotqa
from research.errors import cli_command

logger = logging.getLogger(__name__)

EXIT_OK = 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``data`` command (with ``hotpotqa`` and ``flashrag``) to ``subparsers``."""
    data = subparsers.add_parser(
        "data", help="convert datasets to training / evaluation rows (parquet)"
    )
    commands = data.add_subparsers(dest="data_command", metavar="{hotpotqa,flashrag}")
    commands.required = True
    hotpotqa = commands.add_parser(
        "hotpotqa", help="HotpotQA JSON -> train.parquet and dev.parquet (the original's data)"
    )
    add_hotpotqa_arguments(hotpotqa)
    hotpotqa.set_defaults(func=run_hotpotqa)
    flashrag = commands.add_parser("flashrag", help="a FlashRAG jsonl dataset -> one parquet file")
    add_flashrag_arguments(flashrag)
    flashrag.set_defaults(func=run_flashrag)
    return data


def add_hotpotqa_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``research data hotpotqa`` and ``training/data_preprocess_hpqa.py``.

    The original script's option names (``--train_data_path`` ...) are accepted as aliases.
    """
    parser.add_argument(
        "--train",
        "--train_data_path",
        required=True,
        metavar="FILE",
        help="HotpotQA train file, hotpot_train_v1.1.json",
    )
    parser.add_argument(
        "--dev",
        "--dev_data_path",
        required=True,
        metavar="FILE",
        help="HotpotQA dev file, hotpot_dev_fullwiki_v1.json",
    )
    parser.add_argument(
        "--out",
        "--output_dir",
        required=True,
        metavar="DIR",
        help="output folder for train.parquet and dev.parquet (created if missing)",
    )
    parser.add_argument(
        "--dev-size",
        type=_positive_int,
        default=DEFAULT_DEV_SIZE,
        metavar="N",
        help="dev questions kept after the seeded shuffle (default: %(default)s, as the original)",
    )
    parser.add_argument(
        "--full-dev",
        action="store_true",
        help="keep every dev question (in the same shuffled order) instead of --dev-size",
    )
    _add_seed(parser, "seed of the dev shuffle (default: %(default)s, as the original)")
    _add_progress(parser)


def add_flashrag_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``research data flashrag``."""
    parser.add_argument(
        "--input",
        required=True,
        metavar="FILE.jsonl",
        help="FlashRAG jsonl file ({id, question, golden_answers} per line)",
    )
    parser.add_argument(
        "--name",
        required=True,
        help="dataset name, written as data_source (e.g. bamboogle, strategyqa, musique)",
    )
    parser.add_argument("--out", required=True, metavar="FILE.parquet", help="output file")
    parser.add_argument(
        "--sample",
        type=_positive_int,
        default=None,
        metavar="N",
        help="keep N records after the seeded shuffle (default: all, in file order)",
    )
    _add_seed(parser, "seed of the --sample shuffle (default: %(default)s)")
    parser.add_argument(
        "--keep-metadata",
        action="store_true",
        help="keep each record's metadata as a JSON string in extra_info.metadata",
    )
    _add_progress(parser)


def run_hotpotqa(args: argparse.Namespace) -> int:
    """Handler of ``research data hotpotqa``: convert, print a one-line summary."""
    return _run(
        lambda: convert_hotpotqa(
            args.train,
            args.dev,
            args.out,
            dev_size=args.dev_size,
            full_dev=args.full_dev,
            seed=args.seed,
            progress=args.progress,
        )
    )


def run_flashrag(args: argparse.Namespace) -> int:
    """Handler of ``research data flashrag``: convert, print a one-line summary."""
    return _run(
        lambda: convert_flashrag(
            args.input,
            args.name,
            args.out,
            sample=args.sample,
            seed=args.seed,
            keep_metadata=args.keep_metadata,
            progress=args.progress,
        )
    )


@cli_command
def _run(convert: Callable[[], object]) -> int:
    """Run ``convert``; print its summary, or the input error on stderr (exit code 2)."""
    print(convert())
    return EXIT_OK


def _add_seed(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=help_text)


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="hide progress bars (they show only on a terminal anyway)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value
