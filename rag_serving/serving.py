"""The retrieval service, with the original ReSearch command line.

    python rag_serving/serving.py [--config FILE] --num_retriever 1 --port 8000

Same as ``research serve`` (the same flags, ``section.key=value`` overrides and ``--keys``);
without ``--config`` the default that ships with the package is loaded
(``research/configs/serving_config.yaml``, commented). See ``research serve --help``.
"""

import sys
from pathlib import Path

try:
    import research  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from research.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
