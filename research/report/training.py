"""The sections of a training run's report, read from the files the run writes
(``metrics.jsonl``, ``rollouts.jsonl``, ``validation.jsonl``, ``validation_items.jsonl``,
``train_config.yaml``, ``research_rollout.yaml``)."""

from __future__ import annotations

import logging
import math
from collections import Counter
from html import escape
from pathlib import Path

from research.behaviour import KEY_PREFIXES
from research.report.charts import PALETTE, legend, line_chart, stacked_bars
from research.report.page import KEY, read_jsonl, table
from research.report.trajectories import pieces_html, record_pieces

logger = logging.getLogger(__name__)

MAIN = ("reward", "accuracy", "format_valid", "groups_with_spread", "searches_per_answer",
        "completions/mean_length", "rollout/inserted_share", "entropy", "clip_ratio/region_mean",
        "loss")
VALIDATION_KEYS = ("em", "f1", "reward", "searches_per_answer", "response_length")
MAX_TRAJECTORIES = 200


def behaviour_keys(keys) -> list[str]:
    """research.behaviour's monitors (when and how the model searches, by question type)
    among ``keys``, their sample counts left out."""
    return [k for k in keys if k.startswith(KEY_PREFIXES) and not k.endswith("/samples")]


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def step_rows(run_dir: Path) -> list[dict]:
    """The per-step records of ``metrics.jsonl`` (not the trainer's closing summary)."""
    return [r for r in read_jsonl(run_dir / "metrics.jsonl")
            if "step" in r and "train_runtime" not in r]


def run_summary(run_dir: Path) -> str:
    """Model, training data, reward and engine settings from ``train_config.yaml``."""
    import yaml

    path = run_dir / "train_config.yaml"
    c = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}
    m, d, r, g = (c.get(k) or {} for k in ("model", "data", "rollout", "grpo"))
    parts = [f"model {m.get('path')}", f"data {d.get('train')}"
             + (f" ({d['train_type']})" if d.get("train_type") else ""),
             f"reward {(c.get('reward') or {}).get('name')}",
             f"search {'on' if r.get('search', True) else 'off'}",
             f"{g.get('prompts_per_step')} prompts x {g.get('num_generations')} per step"]
    return " · ".join(parts) if c else ""


def monitor_keys(rows: list[dict]) -> list[str]:
    """Every numeric monitor the run recorded: the main ones first, then in recorded order."""
    seen = list(dict.fromkeys(k for r in rows for k, v in r.items() if k != "step" and _number(v)))
    return [k for k in MAIN if k in seen] + [k for k in seen if k not in MAIN]


def curves(rows: list[dict], keys, title: str, prefix: str = "") -> str:
    if not keys:
        return ""
    charts = [line_chart(prefix + k, [(r["step"], r[k]) for r in rows if _number(r.get(k))],
                         title=k, color=PALETTE[i % 3]) for i, k in enumerate(keys)]
    return f"<h2>{escape(title)}</h2><div class=\"grid\">" + "\n".join(charts) + "</div>"


def _folded(section: str) -> str:
    """A section closed until clicked (its charts stay in the page)."""
    if not section:
        return ""
    head, _, body = section.partition("</h2>")
    return f'<details><summary class="h">{head[4:]}</summary>{body}</details>'


def reasons_section(rows: list[dict]) -> str:
    rows = [r for r in rows if isinstance(r.get("reasons"), dict)]
    if not rows:
        return ""
    totals = Counter()
    for r in rows:
        totals.update(r["reasons"])
    labels = [label for label, _ in totals.most_common()]
    steps = [r["step"] for r in rows]
    counts = [r["reasons"] for r in rows]
    body = table(["reason", *map(str, steps), "all"],
                 [[label, *(c.get(label, 0) for c in counts), totals[label]] for label in labels])
    return ("<h2>Reward reasons over time</h2>"
            + stacked_bars("share of samples per reason", steps, counts, labels)
            + legend(labels) + f"<details><summary>counts per step</summary>{body}</details>")


def _turns(record: dict) -> tuple[str, str]:
    turns = record.get("turns") or []
    queries = "<br>".join(escape(str(t.get("query", ""))) + (
        f' <span class="bad">({escape(str(t["failure"]))})</span>' if t.get("failure") else "")
        for t in turns)
    docs = "<br>".join(escape(", ".join(map(str, t.get("doc_ids") or [])) or "-") for t in turns)
    return f"<td>{queries}</td>", f"<td>{docs}</td>"


def _spread(records: list[dict], cap: int) -> list[dict]:
    if len(records) <= cap:
        return records
    return [records[round(i * (len(records) - 1) / (cap - 1))] for i in range(cap)]


def trajectories_section(run_dir: Path, decode, source_note: str) -> str:
    records = read_jsonl(run_dir / "rollouts.jsonl")
    if not records:
        return ""
    shown = _spread(records, MAX_TRAJECTORIES)
    rows = []
    for r in shown:
        pieces, _ = record_pieces(r, decode)
        queries, docs = _turns(r)
        rows.append([r.get("step"), r.get("question"), f"<td>{pieces_html(pieces)}</td>",
                     queries, docs, r.get("reward"), r.get("reason"), r.get("finish_reason")])
    note = (f"{len(shown)} of {len(records)} sampled trajectories (rollouts.jsonl); "
            f"responses {source_note}.")
    return ("<h2>Sampled trajectories</h2>" + KEY + f'<p class="sub">{escape(note)}</p>'
            + table(["step", "question", "response", "queries", "retrieved doc ids", "reward",
                     "reason", "finish"], rows, "traj"))


def validation_items_section(run_dir: Path) -> str:
    items = read_jsonl(run_dir / "validation_items.jsonl")
    if not items:
        return ""
    last = max(i.get("step", 0) for i in items)
    first = {i.get("id"): i for i in items if i.get("step", 0) == 0}
    rows = []
    for it in [i for i in items if i.get("step", 0) == last][:MAX_TRAJECTORIES]:
        before = first.get(it.get("id"), {}).get("prediction") if last else None
        pieces, _ = record_pieces(it, None)
        rows.append([it.get("question"), it.get("golden_answers"), before, it.get("prediction"),
                     it.get("em"), it.get("f1"), f"<td>{pieces_html(pieces)}</td>"])
    return (f"<h2>Validation answers at step {last}</h2>"
            + table(["question", "golden answers", "prediction at step 0",
                     f"prediction at step {last}", "em", "f1", "response"], rows, "traj"))


def config_section(run_dir: Path) -> str:
    parts = []
    for name in ("train_config.yaml", "research_rollout.yaml"):
        path = run_dir / name
        if path.is_file():
            parts.append(f"<details><summary>{name}</summary><pre>"
                         f"{escape(path.read_text(encoding='utf-8'))}</pre></details>")
    return "<h2>Configuration</h2>" + "".join(parts) if parts else ""


def training_sections(run_dir: Path, decode, source_note: str) -> list[str]:
    rows = step_rows(run_dir)
    validation = read_jsonl(run_dir / "validation.jsonl")
    keys = monitor_keys(rows)
    main, when = [k for k in keys if k in MAIN], behaviour_keys(keys)
    sections = [curves(rows, main, "Training: reward, answers, searches, length"),
                curves(rows, when, "Training: when and how it searches, by question type"),
                _folded(curves(rows, [k for k in keys if k not in MAIN and k not in when],
                               "Every other monitor"))]
    if validation:
        keys = [k for k in VALIDATION_KEYS if any(k in v for v in validation)]
        keys += behaviour_keys(monitor_keys(validation))
        sections.append(curves(validation, keys, "Validation (greedy, held-out questions)",
                               "validation/"))
    return [*sections, reasons_section(rows), trajectories_section(run_dir, decode, source_note),
            validation_items_section(run_dir), config_section(run_dir)]
