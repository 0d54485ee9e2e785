"""The references a trained model is measured against, in the original's table shape: every
method of ``research eval`` (and the scripted policies) on held-out questions by type, EM
with a 95% bootstrap interval.

    python benchmarks/references.py                               # scripted policies only
    python benchmarks/references.py --methods direct naive-rag research
    python benchmarks/references.py --methods research \\
        --model runs/multihop/search/final --label "ReSearch (trained)"
    python benchmarks/references.py --methods --learning \\
        benchmarks/results/learning_multihop_dev.jsonl      # add an evidence run's rows

Datasets are ``NAME`` or ``NAME:TYPE`` (``factbook-facts:bridge``: the questions whose
``metadata.type`` is ``bridge``); every question of the dev split unless ``--sample N`` (a
seeded random N). Each method runs through ``research eval``'s runner (its run folders under
``--out`` resume), against a retrieval service started on the dataset's corpus, the model
in this process. The rollout settings of ReSearch are the multi-hop recipe's
(``cpu-multihop``: base template, the bridge example, at most 3 searches of 1 passage of 80
tokens, 384 tokens); the baselines get ``--topk`` passages and the chat template.

Written to ``--results`` (``benchmarks/results/references.json``): per row (a method, or the
``--label`` of a model) and dataset the EM, its 95% bootstrap interval (1,000 resamples of
the questions, seed 0), F1, searches per answer and the question count, merged with the rows
already there; one line per row run here, dataset and question (prediction, golden answers,
EM, queries) to ``NAME_dev.jsonl`` beside it (the ``--learning`` rows keep theirs in the
evidence run's file); and the table, printed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

RESEARCH_ROLLOUT = ["rollout.template=base",
                    "rollout.stop_at_answer=true", "rollout.on_max_turns=answer",
                    "rollout.max_turns=3", "rollout.top_k=1", "rollout.max_result_tokens=80",
                    "rollout.max_response_tokens=384"]
SCRIPTED = ["one-search-rule", "oracle-chain"]
DATASETS = ["factbook-facts:bridge", "factbook-facts:one-hop"]


def bootstrap(values: list[float], resamples: int = 1000, seed: int = 0) -> list[float]:
    """The 95% percentile interval of the mean of ``values``.

    >>> bootstrap([1.0] * 10)
    [1.0, 1.0]
    >>> lo, hi = bootstrap([0.0, 1.0] * 50)
    >>> 0.38 < lo < 0.5 < hi < 0.62
    True
    """
    if not values:
        return [0.0, 0.0]
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    return [round(means[int(0.025 * resamples)], 4), round(means[int(0.975 * resamples) - 1], 4)]


def cell(records: list[dict]) -> dict:
    """A table cell's figures from the run's per-question records."""
    n = max(1, len(records))
    ems = [float(r["em"]) for r in records]
    return {"em": round(sum(ems) / n, 4), "em_ci95": bootstrap(ems),
            "f1": round(sum(r["f1"] for r in records) / n, 4),
            "searches_per_answer": round(sum(r["searches"] for r in records) / n, 3),
            "questions": len(records)}


def table(rows: dict[str, dict[str, dict]], datasets: list[str]) -> str:
    """Rows x datasets, EM x 100 with its interval."""
    lines = ["| Method | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
    for name, cells in rows.items():
        parts = []
        for d in datasets:
            c = cells.get(d)
            parts.append("-" if c is None else
                         f"{100 * c['em']:.1f} [{100 * c['em_ci95'][0]:.1f}, "
                         f"{100 * c['em_ci95'][1]:.1f}] (n={c['questions']})")
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


LEARNING_ROWS = {("search", "before"): "ReSearch (untrained)",
                 ("search", "after"): "ReSearch (trained)",
                 ("closed-book", "before"): "Closed book (untrained)",
                 ("closed-book", "after"): "Closed book (trained, same budget)"}


def learning_rows(path: Path, suffix: str = ""):
    """``(row, dataset, arm, records)`` of an evidence run's per-question lines (of the
    factbook-facts dev set), by arm, stage and question type; ``records`` in the runner's
    shape (``em``, ``f1``, ``searches``). ``suffix`` goes inside each row name's brackets
    (``", seed 7"``: "ReSearch (trained, seed 7)"), so that a second run's rows sit beside
    the first's."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    groups: dict[tuple, list[dict]] = {}
    for x in lines:
        name = LEARNING_ROWS.get((x["arm"], x["stage"]), f"{x['arm']} ({x['stage']})")
        key = (name[:-1] + suffix + ")" if suffix else name,
               "factbook-facts" + (f":{x['type']}" if x.get("type") else ""), x["arm"])
        groups.setdefault(key, []).append({"em": x["em"], "f1": x["f1"],
                                           "searches": len(x["queries"])})
    for (row, dataset, arm), records in groups.items():
        yield row, dataset, arm, records


def overrides_for(method: str, dataset: str, args) -> list[str]:
    name, _, kind = dataset.partition(":")
    out = [f"method.name={method}", f"data.dataset_name={name}", f"run.save_dir={args.out}",
           f"method.top_k={args.topk}", f"generator.model={args.model}",
           f"run.batch_size={args.batch_size}", f"generator.dtype={args.dtype}"]
    if kind:
        out.append(f"data.type={kind}")
    if args.sample:
        out += [f"data.sample_num={args.sample}", "data.random_sample=true", "data.seed=0"]
    if args.label:
        out.append("run.save_note=" + "".join(c if c.isalnum() else "-" for c in args.label))
    if method == "research":
        out += [*RESEARCH_ROLLOUT, f"rollout.example={args.example}"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="*", default=SCRIPTED)
    p.add_argument("--datasets", nargs="+", default=DATASETS)
    p.add_argument("--model", default="qwen2.5-0.5b", help="packaged model name or folder")
    p.add_argument("--label", default=None, help="the row name of ReSearch with a model other "
                   "than the packaged one (e.g. 'ReSearch (trained)'); default: the method's "
                   "name")
    p.add_argument("--sample", type=int, default=None, help="a seeded random N per dataset")
    p.add_argument("--example", default="bridge", help="ReSearch's worked example (the "
                   "recipe's bridge; one-search, two-search)")
    p.add_argument("--topk", type=int, default=3, help="passages per baseline retrieval")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning", default=None, metavar="NAME_dev.jsonl",
                   help="also add the rows of an evidence run's per-question file "
                        "(benchmarks/learning.py): each arm and stage, scored there")
    p.add_argument("--learning-suffix", default="", metavar="TEXT",
                   help="added inside the --learning rows' brackets, to keep a second run's "
                        "rows apart (', seed 7': 'ReSearch (trained, seed 7)')")
    p.add_argument("--out", default="runs/references")
    p.add_argument("--results", default=str(Path(__file__).parent / "results"
                                            / "references.json"))
    args = p.parse_args(argv)

    from research.evaluation.config import load_config
    from research.evaluation.methods import resolve
    from research.evaluation.runner import METHOD_TITLES, run
    from research.models.loading import cpu_runs_bf16

    # the precision the model ran in (bf16 is asked for only where the CPU runs it at speed)
    precision = "bfloat16" if args.dtype == "bfloat16" and cpu_runs_bf16() else "float32"
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
    lines_path = path.with_name(f"{path.stem}_dev.jsonl")
    lines = [json.loads(x) for x in lines_path.read_text().splitlines()] if (
        lines_path.is_file()) else []
    for method in args.methods:
        key = resolve(method)
        row = args.label if args.label and key == "research" else METHOD_TITLES.get(key, key)
        for dataset in args.datasets:
            config = load_config(None, overrides_for(key, dataset, args))
            start = time.perf_counter()
            out = run(config, progress=True)
            records = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
            results["rows"].setdefault(row, {})[dataset] = {
                **cell(records), "method": key, "model": None if key in SCRIPTED else args.model,
                "dtype": None if key in SCRIPTED else precision,
                "seconds_this_call": round(time.perf_counter() - start, 1),
                "run": str(out)}
            lines = [x for x in lines if (x["row"], x["dataset"]) != (row, dataset)] + [
                {"row": row, "dataset": dataset, "id": r["id"], "prediction": r["prediction"],
                 "golden_answers": r["golden_answers"], "em": r["em"],
                 "queries": [t["query"] for t in r["trajectory"] if "query" in t]}
                for r in records]
            results.update(date=time.strftime("%Y-%m-%d"), commands=sorted(set(
                results.get("commands", []) + ["python benchmarks/references.py " + " ".join(
                    sys.argv[1:] if argv is None else argv)])))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=2) + "\n")
            lines_path.write_text("".join(json.dumps(x) + "\n" for x in lines))
            print(f"{row} / {dataset}: {results['rows'][row][dataset]}", flush=True)
    if args.learning:
        for row, dataset, arm, records in learning_rows(Path(args.learning),
                                                           args.learning_suffix):
            results["rows"].setdefault(row, {})[dataset] = {
                **cell(records), "method": "research" if arm == "search" else arm,
                "source": args.learning}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    datasets = list(dict.fromkeys(d for cells in results["rows"].values() for d in cells))
    print(table(results["rows"], datasets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
