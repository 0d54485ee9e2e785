"""HotpotQA JSON -> ``train.parquet`` and ``dev.parquet`` rows (the original's entry point).

    python training/data_preprocess_hpqa.py --train hotpot_train_v1.1.json \
        --dev hotpot_dev_fullwiki_v1.json --out data/hotpotqa [--full-dev] [--dev-size 100]

Same as ``research data hotpotqa``; see :mod:`research.data.hotpotqa` for what is written.
Runs from a checkout without installing the package. Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import research  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from research.data.commands import add_hotpotqa_arguments, run_hotpotqa  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, convert the HotpotQA files and return the exit code."""
    parser = argparse.ArgumentParser(
        prog="data_preprocess_hpqa.py",
        description="Convert HotpotQA's JSON files to ReSearch training rows (parquet).",
    )
    add_hotpotqa_arguments(parser)
    return run_hotpotqa(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
