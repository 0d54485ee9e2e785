"""The retrieval service, with the original ReSearch command line.

    python rag_serving/serving.py --config rag_serving/serving_config.yaml \
        --num_retriever 1 --port 8000

Same as ``research serve``; see ``research serve --help`` and the config file's comments.
"""

import argparse
import sys
from pathlib import Path

try:
    import research  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from research.cli import add_serve_args, main  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="ReSearch retrieval service")
    add_serve_args(parser)
    args = parser.parse_args()
    argv = ["serve"] + [
        item
        for flag, value in vars(args).items()
        if value is not None
        for item in (f"--{flag}", str(value))
    ]
    sys.exit(main(argv))
