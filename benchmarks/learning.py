"""Evidence that GRPO with search learns: the same CPU budget spent twice, with search and
closed book (the control), each measured by greedy validation on held-out questions before
and after.

    python benchmarks/learning.py                      # the cpu-evidence config
    python benchmarks/learning.py run.max_steps=20     # any training override, both arms

Arms (the same config, questions, seed, steps and batch):

* ``search``: the ReSearch prompt and rollout against the retrieval service on loopback;
  its stage ``before`` is the untrained model with search, ``after`` the trained one;
* ``closed-book``: ``rollout.search=false``: the prompt without the search tool, no search
  (stage ``before``: the closed-book ceiling of the untrained model).

Reported per arm: training reward, accuracy and valid share over the first and the last
quarter of the steps, greedy dev EM / F1 / mean reward before and after, searches per
answer, response length, wall time (from the arm's first start, resumes included) and mean
step time. Written to ``benchmarks/results/learning.json`` (with ``data.train`` /
``data.dev``), each dev question's prediction per arm and stage to
``benchmarks/results/learning_dev.jsonl``, the figure (dev EM, training reward and valid
share against step, both arms) to ``asset/learning.png``, and printed as a markdown table.
A killed run resumes (each arm continues from its checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ARMS = {"search": [], "closed-book": ["rollout.search=false"]}


def jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def summarise(out: Path, wall_s: float | None) -> dict:
    """An arm's numbers from its run directory."""
    steps = [m for m in jsonl(out / "metrics.jsonl") if "loss" in m]
    validation = jsonl(out / "validation.jsonl")
    quarter = max(1, len(steps) // 4)
    first, last = steps[:quarter], steps[-quarter:]
    before, after = (validation[0], validation[-1]) if validation else ({}, {})
    return {
        "steps": len(steps),
        "train_reward_first": mean(m["reward"] for m in first),
        "train_reward_last": mean(m["reward"] for m in last),
        "train_accuracy_first": mean(m["accuracy"] for m in first),
        "train_accuracy_last": mean(m["accuracy"] for m in last),
        "train_valid_first": mean(m.get("format_valid") for m in first),
        "train_valid_last": mean(m.get("format_valid") for m in last),
        "train_searches": mean(m["searches_per_answer"] for m in steps),
        "train_response_length": mean(m["completions/mean_length"] for m in steps),
        "step_time_s": mean(m.get("step_time") for m in steps),
        "wall_s": None if wall_s is None else round(wall_s, 1),
        "dev_questions": before.get("questions"),
        **{f"dev_{k}_{when}": v.get(k) for when, v in (("before", before), ("after", after))
           for k in ("em", "f1", "reward", "searches_per_answer", "response_length")},
    }


def table(results: dict) -> str:
    rows = [("train reward (first / last quarter)", "train_reward_first", "train_reward_last"),
            ("train accuracy (first / last quarter)", "train_accuracy_first",
             "train_accuracy_last"),
            ("train valid share (first / last quarter)", "train_valid_first",
             "train_valid_last"),
            ("dev EM (before / after)", "dev_em_before", "dev_em_after"),
            ("dev F1 (before / after)", "dev_f1_before", "dev_f1_after"),
            ("dev reward (before / after)", "dev_reward_before", "dev_reward_after"),
            ("dev searches per answer (before / after)", "dev_searches_per_answer_before",
             "dev_searches_per_answer_after")]
    arms = list(results["arms"])
    lines = ["| | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for label, a, b in rows:
        lines.append(f"| {label} | " + " | ".join(
            f"{fmt(results['arms'][arm][a])} / {fmt(results['arms'][arm][b])}" for arm in arms)
            + " |")
    lines.append("| steps, mean step time (s), wall time (s) | " + " | ".join(
        f"{r['steps']}, {r['step_time_s']}, {r['wall_s']}" for r in results["arms"].values())
        + " |")
    return "\n".join(lines)


def dev_predictions(arm: str, out: Path) -> list[dict]:
    """One line per stage (``before``: the first validation, ``after``: the last) and dev
    question of an arm, from its ``validation_items.jsonl``."""
    items = jsonl(out / "validation_items.jsonl")
    steps = sorted({it["step"] for it in items})
    stages = {"before": steps[0], "after": steps[-1]} if len(steps) > 1 else {}
    return [{"arm": arm, "stage": stage, "step": step,
             **{k: it[k] for k in ("id", "question", "golden_answers", "prediction", "em")}}
            for stage, step in stages.items() for it in items if it["step"] == step]


def plot(arm_dirs: dict[str, Path], path: Path) -> Path | None:
    """Dev EM, training reward and valid share against step, one line per arm."""
    from research.trainers.plot import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("Dev exact match (greedy, held out)", "validation.jsonl", "em"),
              ("Training reward (mean per step)", "metrics.jsonl", "reward"),
              ("Training valid share", "metrics.jsonl", "format_valid"))
    for ax, (title, name, key) in zip(axes, panels, strict=True):
        for arm, out in arm_dirs.items():
            points = [(r["step"], r[key]) for r in jsonl(out / name) if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=arm)
        ax.set(title=title, xlabel="step", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(plt, fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="training key=value overrides (both arms)")
    p.add_argument("--config", default="cpu-evidence", help="training config (name or path)")
    p.add_argument("--out", default="runs/evidence", help="run directory of the two arms")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--results", default=str(Path(__file__).parent / "results" / "learning.json"))
    p.add_argument("--figure", default=str(Path(__file__).parents[1] / "asset" / "learning.png"))
    args = p.parse_args(argv)

    from research.trainers.config import load_config
    from research.trainers.trl_engine import find_checkpoint, train

    results_path = Path(args.results)
    results = {"command": "python benchmarks/learning.py " + " ".join(sys.argv[1:] if argv is None
                                                                    else argv),
               "config": args.config, "overrides": args.overrides, "cores": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d"), "arms": {}}
    arm_dirs = {arm: Path(args.out) / arm for arm in args.arms}
    dev_lines: list[dict] = []
    for arm, out in arm_dirs.items():
        resume = find_checkpoint(out) is not None
        config = load_config(args.config, [*args.overrides, *ARMS[arm],
                                           f"run.output_dir={out}", f"run.resume={resume}"])
        d = config.data
        results["data"] = {"train": d.train, "train_type": d.train_type, "dev": d.dev,
                           "dev_split": d.dev_split, "dev_type": d.dev_type,
                           "dev_limit": d.dev_limit, "model": config.model.path}
        print(f"== {arm}: {out} ({'resuming' if resume else 'starting'})", flush=True)
        started = out / "started_at"  # wall time from the arm's first start (resumes included)
        out.mkdir(parents=True, exist_ok=True)
        if not started.exists():
            started.write_text(str(time.time()))
        finished = out / "finished_at"
        if not finished.exists():  # a finished arm is not trained again
            train(config)
            finished.write_text(str(time.time()))
        results["arms"][arm] = summarise(out, float(finished.read_text())
                                         - float(started.read_text()))
        results["dev_questions"] = results["arms"][arm]["dev_questions"]
        dev_lines += dev_predictions(arm, out)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        results_path.with_name("learning_dev.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in dev_lines))
        plot(arm_dirs, Path(args.figure))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
