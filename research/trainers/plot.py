"""The run's figure: validation score and response length over training steps (as the seed's
``asset/validation.png``), drawn from ``validation.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path


def plot_validation(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Write ``validation.png`` (two panels) from ``run_dir/validation.jsonl``.

    Returns the image path, or None when there is no validation record yet or matplotlib is
    not installed (the run's JSONL holds the same numbers).
    """
    run_dir = Path(run_dir)
    path = run_dir / "validation.jsonl"
    if not path.is_file():
        return None
    rows = sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                  key=lambda r: r["step"])
    if not rows:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [r["step"] for r in rows]
    fig, (score, length) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("reward", "reward"), ("em", "exact match"), ("f1", "F1")):
        if all(key in r for r in rows):
            score.plot(steps, [r[key] for r in rows], marker="o", label=label)
    score.set(title="Validation score", xlabel="step", ylim=(-0.02, 1.02))
    score.legend()
    length.plot(steps, [r["response_length"] for r in rows], marker="o", color="tab:purple")
    length.set(title="Response length (tokens)", xlabel="step")
    for ax in (score, length):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "validation.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
