"""The sections of an evaluation report, read from run folders of ``research eval``
(``items.jsonl``, ``metrics.json``, ``config.yaml``): the metrics of every run beside the
others on the same data (the baselines), then each run's questions with the prediction, the
golden answers, the searches and the response."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from research.report.page import KEY, read_jsonl, table
from research.report.trajectories import pieces_html, text_pieces

METRICS = ("em", "acc", "f1", "precision", "recall", "judge_acc", "searches",
           "search_failures", "generated_tokens")
MAX_ITEMS = 200


def is_eval_run(path: Path) -> bool:
    return (path / "metrics.json").is_file() or (path / "items.jsonl").is_file()


def eval_runs(path: Path) -> list[Path]:
    """``path`` itself when it is a run folder, else the run folders it holds (a save_dir)."""
    if is_eval_run(path):
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and is_eval_run(p))


def summary(run: Path) -> dict:
    path = run / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def metrics_section(runs: list[Path], current: Path | None) -> str:
    """One row per run, grouped by dataset and split; the run the report is about in bold."""
    summaries = [(run, summary(run)) for run in runs]
    summaries.sort(key=lambda rs: (rs[1].get("dataset", ""), rs[1].get("split", ""),
                                   rs[0] != current))
    keys = [k for k in METRICS if any(k in s.get("metrics", {}) for _, s in summaries)]
    rows = []
    for run, s in summaries:
        name = f"<b>{escape(run.name)}</b>" if run == current else escape(run.name)
        m = s.get("metrics", {})
        rows.append([f"<td>{name}</td>", s.get("method"), s.get("dataset"), s.get("split"),
                     s.get("model"), s.get("note"), s.get("questions"),
                     *(m.get(k) for k in keys), s.get("seconds")])
    return ("<h2>Metrics beside the baselines</h2>"
            + table(["run", "method", "dataset", "split", "model", "note", "questions", *keys,
                     "s"], rows))


def _searches(record: dict) -> tuple[str, str]:
    steps = [s for s in record.get("trajectory") or [] if isinstance(s, dict) and "query" in s]
    queries = "<br>".join(escape(str(s["query"])) for s in steps)
    docs = "<br>".join(escape(", ".join(map(str, s.get("doc_ids") or [])) or "-") for s in steps)
    return f"<td>{queries}</td>", f"<td>{docs}</td>"


def items_section(run: Path, open_: bool) -> str:
    records = read_jsonl(run / "items.jsonl")
    rows = []
    for r in records[:MAX_ITEMS]:
        mark = '<td class="ok">yes</td>' if r.get("em") else '<td class="bad">no</td>'
        queries, docs = _searches(r)
        response = pieces_html(text_pieces(str(r.get("response") or "")))
        rows.append([r.get("id"), r.get("question"), r.get("golden_answers"), r.get("prediction"),
                     mark, r.get("f1"), queries, docs, f"<td>{response}</td>"])
    s = summary(run)
    title = f"{run.name}: {len(records)} questions" + (
        f", showing {MAX_ITEMS}" if len(records) > MAX_ITEMS else "")
    body = table(["id", "question", "golden answers", "prediction", "exact", "f1", "queries",
                  "retrieved doc ids", "response"], rows, "traj")
    config = run / "config.yaml"
    conf = (f"<details><summary>config.yaml</summary><pre>"
            f"{escape(config.read_text(encoding='utf-8'))}</pre></details>"
            if config.is_file() else "")
    return (f"<details{' open' if open_ else ''}><summary><b>{escape(title)}</b> "
            f"({escape(str(s.get('method', '')))})</summary>{body}{conf}</details>")


def evaluation_sections(path: Path) -> list[str]:
    """For a run folder, its metrics beside its sibling runs' and its questions; for a
    save_dir, every run's."""
    runs = eval_runs(path)
    current = path if is_eval_run(path) else None
    siblings = eval_runs(path.parent) if current is not None else runs
    mine = summary(path) if current is not None else {}
    beside = [r for r in siblings if r == current or (
        summary(r).get("dataset") == mine.get("dataset")
        and summary(r).get("split") == mine.get("split"))] if current is not None else runs
    return [metrics_section(beside, current), "<h2>Per-question predictions</h2>" + KEY,
            *(items_section(run, open_=len(runs) == 1) for run in runs)]
