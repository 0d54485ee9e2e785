"""Evaluate a checkpoint with ReSearch and the RAG baselines (the original's entry point).

    python evaluation/run_eval.py --method_name research --split dev \
        --dataset_name hotpotqa --data_dir /data/flashrag

(hotpotqa is not embedded: ``--data_dir`` holds FlashRAG's ``hotpotqa/dev.jsonl``.) Without
``--config_path FILE`` the default config that ships with the package is used
(``research/configs/eval_config.yaml``).

Same as ``research eval``; see ``research eval --help`` and ``--keys``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.evaluation.commands import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
