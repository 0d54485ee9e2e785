"""Evidence that GRPO with search learns: the same CPU budget spent twice, with search and
closed book (the control), each scored greedy on every held-out dev question before and
after, by question type.

    python benchmarks/learning.py                      # the cpu-evidence config
    python benchmarks/learning.py --config cpu-multihop # one-hop and bridge questions
    python benchmarks/learning.py run.max_steps=20     # any training override, both arms

Arms (the same config, questions, seed, steps and batch):

* ``search``: the ReSearch prompt and rollout against the retrieval service on loopback;
  its stage ``before`` is the untrained model with search, ``after`` the trained one;
* ``closed-book``: ``rollout.search=false``: the prompt without the search tool, no search
  (stage ``before``: the closed-book ceiling of the untrained model).

Training validates on ``data.dev_limit`` questions every ``run.eval_steps`` (the curve); after
an arm has trained, both its stages are scored greedy on *every* question of ``data.dev``
of ``data.dev_type`` (``--dev-limit`` to cut that), one model in this process, against the
same service.

Reported per arm: training reward, accuracy and valid share over the first and the last
quarter of the steps, dev EM / F1 / searches per answer / response length before and after
(all dev questions, and per question type: EM, searches per answer, the share of bridge
answers whose second query names the bridge entity), wall time (from the arm's first start,
resumes included) and mean step time. Written to ``benchmarks/results/learning.json``
(``--results NAME.json``; with ``data.train`` / ``data.dev``), one line per arm, stage and dev
question (prediction, golden answers, type, the whole response, every query and the
retrieved document ids) to ``NAME_dev.jsonl`` beside it, the figure (dev EM and searches per
answer by type against step, and the training reward, both arms) to ``asset/learning.png``,
and printed as a markdown table. A killed run resumes: each arm continues from its
checkpoint, and a stage's scoring from its last finished question.
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


def stage_figures(lines: list[dict]) -> dict:
    """Dev figures of one stage's scored lines: overall and per question type."""
    from research.behaviour import behaviour

    n = max(1, len(lines))
    figures = {"questions": len(lines),
               **{k: round(sum(x[k] for x in lines) / n, 4) for k in ("em", "f1")},
               "searches_per_answer": round(sum(len(x["queries"]) for x in lines) / n, 4),
               "response_length": round(sum(x["response_tokens"] for x in lines) / n, 1)}
    m = behaviour({"type": x["type"], "queries": x["queries"], "correct": x["em"] == 1.0,
                   "bridge_entity": x.get("bridge_entity")} for x in lines)
    for key, value in m.items():
        if key.startswith("type/"):
            _, kind, name = key.split("/")
            figures.setdefault("by_type", {}).setdefault(kind, {})[
                {"exact": "em", "searches": "searches_per_answer"}.get(name, name)] = (
                round(value, 4))
    if "bridge/entity_in_second_query" in m:
        figures["by_type"]["bridge"]["entity_in_second_query"] = round(
            m["bridge/entity_in_second_query"], 4)
    return figures


def summarise(out: Path, wall_s: float | None, scored: dict[str, list[dict]]) -> dict:
    """An arm's numbers from its run directory and its scored dev stages."""
    steps = [m for m in jsonl(out / "metrics.jsonl") if "loss" in m]
    quarter = max(1, len(steps) // 4)
    first, last = steps[:quarter], steps[-quarter:]
    before, after = (stage_figures(scored.get(s, [])) for s in ("before", "after"))
    by_type = {kind: {f"{k}_{when}": v for when, stage in (("before", before), ("after", after))
                      for k, v in stage.get("by_type", {}).get(kind, {}).items()}
               for kind in {**before.get("by_type", {}), **after.get("by_type", {})}}
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
           for k in ("em", "f1", "searches_per_answer", "response_length")},
        "dev_by_type": by_type,
    }


def table(results: dict) -> str:
    rows = [("train reward (first / last quarter)", "train_reward_first", "train_reward_last"),
            ("train accuracy (first / last quarter)", "train_accuracy_first",
             "train_accuracy_last"),
            ("train valid share (first / last quarter)", "train_valid_first",
             "train_valid_last"),
            ("dev EM (before / after)", "dev_em_before", "dev_em_after"),
            ("dev F1 (before / after)", "dev_f1_before", "dev_f1_after"),
            ("dev searches per answer (before / after)", "dev_searches_per_answer_before",
             "dev_searches_per_answer_after")]
    arms = list(results["arms"])
    kinds = sorted({k for r in results["arms"].values() for k in r.get("dev_by_type", {})})
    for kind in kinds:
        rows += [(f"dev EM, {kind} (before / after)", ("dev_by_type", kind, "em_before"),
                  ("dev_by_type", kind, "em_after")),
                 (f"dev searches per answer, {kind} (before / after)",
                  ("dev_by_type", kind, "searches_per_answer_before"),
                  ("dev_by_type", kind, "searches_per_answer_after"))]
    if "bridge" in kinds:
        rows.append(("bridge: second query names the entity (before / after)",
                     ("dev_by_type", "bridge", "entity_in_second_query_before"),
                     ("dev_by_type", "bridge", "entity_in_second_query_after")))
    lines = ["| | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731

    def get(arm: str, key):
        value = results["arms"][arm]
        for part in (key if isinstance(key, tuple) else (key,)):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    for label, a, b in rows:
        lines.append(f"| {label} | " + " | ".join(
            f"{fmt(get(arm, a))} / {fmt(get(arm, b))}" for arm in arms) + " |")
    lines.append("| steps, mean step time (s), wall time (s) | " + " | ".join(
        f"{r['steps']}, {r['step_time_s']}, {r['wall_s']}" for r in results["arms"].values())
        + " |")
    return "\n".join(lines)


def score_dev(arm: str, stage: str, model_path: str, config, items: list[dict], client,
              path: Path) -> list[dict]:
    """Greedy ReSearch (or closed-book) answers of ``model_path`` to every dev item, one
    line each in ``path``; questions already there are not asked again (a rerun resumes)."""
    from research.behaviour import question_facts
    from research.evaluation.research_pipeline import evaluate
    from research.models.loading import load_model
    from research.rollout.backends.hf import HFGenerator

    done = {x["id"]: x for x in jsonl(path)}
    pending = [it for it in items if it["id"] not in done]
    if pending:
        print(f"== {arm} / {stage}: scoring {len(pending)} of {len(items)} dev questions "
              f"({model_path})", flush=True)
        model, tokenizer = load_model(model_path, "bfloat16")  # fp32 where the CPU lacks bf16
        with path.open("a", encoding="utf-8") as sink:
            def write(i: int, rec: dict) -> None:
                it = pending[i]
                line = {"arm": arm, "stage": stage, "id": it["id"], **question_facts(it),
                        "question": it["question"], "golden_answers": it["golden_answers"],
                        "prediction": rec["prediction"], "em": rec["em"], "f1": rec["f1"],
                        "queries": rec["queries"],
                        "doc_ids": [t["doc_ids"] for t in rec["turns"]],
                        "finish_reason": rec["finish_reason"],
                        "response_tokens": rec["response_tokens"], "response": rec["response"]}
                sink.write(json.dumps(line) + "\n")
                sink.flush()
                done[it["id"]] = line

            evaluate(pending, HFGenerator(model, tokenizer, max_batch=64), tokenizer, client,
                     config.rollout, batch_size=len(pending), progress=True, on_record=write)
    return [done[it["id"]] for it in items]


def plot(arm_dirs: dict[str, Path], results: dict, path: Path) -> Path | None:
    """Dev EM and searches per answer by question type against step (the training
    validations; the full-dev scores before and after as large markers), and the training
    reward, one colour per arm."""
    from research.trainers.plot import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    styles = {"bridge": "-", "one-hop": "--", "untyped": ":"}
    for colour, (arm, out) in enumerate(arm_dirs.items()):
        c = f"C{colour}"
        validation = jsonl(out / "validation.jsonl")
        figures = results["arms"].get(arm, {})
        last = max([v["step"] for v in validation] or [0])
        for ax, key, full in ((axes[0], "exact", "em"),
                              (axes[1], "searches", "searches_per_answer")):
            for kind, style in styles.items():
                points = [(v["step"], v[f"type/{kind}/{key}"]) for v in validation
                          if f"type/{kind}/{key}" in v]
                if points:
                    ax.plot(*zip(*points, strict=True), style, color=c, marker=".",
                            label=f"{arm}, {kind}")
                by_type = figures.get("dev_by_type", {}).get(kind, {})
                for step, when in ((0, "before"), (last, "after")):
                    if by_type.get(f"{full}_{when}") is not None:
                        ax.plot([step], [by_type[f"{full}_{when}"]], "s" if kind == "bridge"
                                else "D", color=c, markersize=8, alpha=0.6)
        rewards = [(m["step"], m["reward"]) for m in jsonl(out / "metrics.jsonl") if "loss" in m]
        if rewards:
            axes[2].plot(*zip(*rewards, strict=True), color=c, marker=".", label=arm)
    titles = ("Dev exact match by type (greedy, held out)\n(markers: every dev question)",
              "Dev searches per answer by type", "Training reward (mean per step)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].set_ylim(-0.02, 1.02)
    axes[2].set_ylim(-0.02, 1.02)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(plt, fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="training key=value overrides (both arms)")
    p.add_argument("--config", default="cpu-evidence", help="training config (name or path)")
    p.add_argument("--out", default="runs/evidence", help="run directory of the two arms")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--dev-limit", type=int, default=None,
                   help="score only the first N dev questions before and after (default: all)")
    p.add_argument("--results", default=str(Path(__file__).parent / "results" / "learning.json"))
    p.add_argument("--figure", default=str(Path(__file__).parents[1] / "asset" / "learning.png"))
    args = p.parse_args(argv)

    from research.data.questions import load_questions
    from research.serving.launch import run_searcher
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
                           "dev_limit": d.dev_limit, "dev_seed": d.dev_seed,
                           "model": config.model.path}
        print(f"== {arm}: {out} ({'resuming' if resume else 'starting'})", flush=True)
        started = out / "started_at"  # wall time from the arm's first start (resumes included)
        out.mkdir(parents=True, exist_ok=True)
        if not started.exists():
            started.write_text(str(time.time()))
        finished = out / "finished_at"
        if not finished.exists():  # a finished arm is not trained again
            train(config)
            finished.write_text(str(time.time()))
        items = load_questions(d.dev, d.dev_split, args.dev_limit, d.dev_type)
        rc, scoring = config.retrieval, out / "scoring"  # the service's files of the scoring
        scoring.mkdir(exist_ok=True)
        with run_searcher(rc, d.dev, scoring) as client:
            scored = {stage: score_dev(arm, stage, model, config, items, client,
                                       out / f"dev_{stage}.jsonl")
                      for stage, model in (("before", config.model.path),
                                           ("after", str(out / "final")))}
        results["arms"][arm] = summarise(out, float(finished.read_text())
                                         - float(started.read_text()), scored)
        results["dev_questions"] = len(items)
        dev_lines += [line for stage in scored.values() for line in stage]
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        results_path.with_name(f"{results_path.stem}_dev.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in dev_lines))
        plot(arm_dirs, results, Path(args.figure))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
