"""The run's figures: validation score and response length over training steps (as the original's
``asset/validation.png``), drawn from ``validation.jsonl``; and the training monitors of every
step (``training.png``: reward, accuracy, valid share, groups with reward spread, searches,
searches and exact share by question type, response length, entropy, clipping, KL), drawn
from ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

# (panel title, [(metrics.jsonl key, label)]) of training.png
TRAINING_PANELS = (
    ("Training reward and answers", [("reward", "mean reward"), ("accuracy", "exact share"),
                                     ("format_valid", "valid share"),
                                     ("groups_with_spread", "groups with spread")]),
    ("Search", [("searches_per_answer", "searches per sample"),
                ("rollout/empty_queries", "empty queries"),
                ("rollout/repeated_queries", "repeated queries"),
                ("rollout/inserted_share", "inserted-token share")]),
    ("By question type", [("type/one-hop/searches", "one-hop: searches"),
                          ("type/bridge/searches", "bridge: searches"),
                          ("type/one-hop/exact", "one-hop: exact share"),
                          ("type/bridge/exact", "bridge: exact share"),
                          ("bridge/entity_in_second_query", "bridge: entity in 2nd query")]),
    ("Response length (tokens)", [("completions/mean_length", "mean length")]),
    ("Policy", [("entropy", "token entropy"), ("clip_ratio/region_mean", "clip fraction"),
                ("kl", "KL")]),
)


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(plt, fig, out: Path, dpi: int) -> Path:
    """Lay out, write and close ``fig``; returns ``out``."""
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def plot_training(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Write ``training.png`` from the step records of ``run_dir/metrics.jsonl``; None when
    there is no step yet or matplotlib is missing."""
    run_dir = Path(run_dir)
    rows = [r for r in _rows(run_dir / "metrics.jsonl") if "loss" in r]
    plt = pyplot()
    if not rows or plt is None:
        return None
    fig, axes = plt.subplots(1, len(TRAINING_PANELS), figsize=(4.2 * len(TRAINING_PANELS), 3.4))
    for ax, (title, series) in zip(axes, TRAINING_PANELS, strict=True):
        for key, label in series:
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=label)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return save_figure(plt, fig, Path(out) if out else run_dir / "training.png", dpi=110)


def plot_validation(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Write ``validation.png`` (two panels) from ``run_dir/validation.jsonl``.

    Returns the image path, or None when there is no validation record yet or matplotlib is
    not installed (the run's JSONL holds the same numbers).
    """
    run_dir = Path(run_dir)
    path = run_dir / "validation.jsonl"
    if not path.is_file():
        return None
    rows = sorted(_rows(path), key=lambda r: r["step"])
    plt = pyplot()
    if not rows or plt is None:
        return None
    steps = [r["step"] for r in rows]
    fig, (score, length) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("reward", "reward"), ("em", "exact match"), ("f1", "F1"),
                       ("type/one-hop/exact", "one-hop EM"), ("type/bridge/exact", "bridge EM")):
        if all(key in r for r in rows):
            score.plot(steps, [r[key] for r in rows], marker="o", label=label)
    score.set(title="Validation score", xlabel="step", ylim=(-0.02, 1.02))
    score.legend()
    length.plot(steps, [r["response_length"] for r in rows], marker="o", color="tab:purple")
    length.set(title="Response length (tokens)", xlabel="step")
    for ax in (score, length):
        ax.grid(alpha=0.3)
    return save_figure(plt, fig, Path(out) if out else run_dir / "validation.png", dpi=120)
