"""The main job on the embedded default, end to end on one CPU machine.

1. Retrieval: build (or reuse) the BM25 index of the embedded ``squad-open-mini`` corpus,
   start the real retrieval service on loopback, send dev questions through the HTTP client
   in batches, and measure recall@5 of each question's gold passage and the throughput.
2. Training (unless ``train=False``): prepare the packaged Qwen2.5-0.5B model, start the
   service on the embedded ``factbook-facts`` corpus, measure the model on held-out dev
   questions with the ReSearch pipeline (greedy), train a short GRPO run with TRL
   (the named config ``quickstart``), measure again, and print the table of its steps
   and the before / after table. The run directory keeps the metrics, rollouts, figures and
   checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from research.data.questions import load_questions
from research.retrieval.client import SearchClient
from research.serving.launch import running_service

logger = logging.getLogger(__name__)


@dataclass
class QuickstartResult:
    dataset: str
    questions: int
    k: int
    recall_at_k: float
    queries_per_second: float
    seconds: float
    run_dir: str


def run_quickstart(run_dir: Path, dataset: str = "squad-open-mini", limit: int | None = 1000,
                   k: int = 5, batch: int = 64) -> QuickstartResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    questions = load_questions(dataset, "dev", limit)
    config = run_dir / "serving_config.yaml"
    config.write_text(f"retriever:\n  embedded: {dataset}\n  method: bm25\n")
    start = time.time()
    hits_found = 0
    with (
        running_service(config, run_dir / "service.log") as service,
        SearchClient(service.url) as client,
        (run_dir / "retrieval.jsonl").open("w") as out,
    ):
        client.batch_search([q["question"] for q in questions[:batch]], k)  # JIT warm-up
        t0 = time.time()
        for i in tqdm(range(0, len(questions), batch), desc="search dev questions"):
            chunk = questions[i : i + batch]
            results = client.batch_search([q["question"] for q in chunk], k)
            for q, hits in zip(chunk, results, strict=True):
                gold = q.get("metadata", {}).get("gold_id")
                found = gold in [h.id for h in hits]
                hits_found += found
                out.write(json.dumps({"id": q["id"], "question": q["question"],
                                      "gold_id": gold, "found": found,
                                      "retrieved": [h.id for h in hits]}) + "\n")
        search_seconds = time.time() - t0
    result = QuickstartResult(
        dataset=dataset, questions=len(questions), k=k,
        recall_at_k=round(hits_found / max(1, len(questions)), 4),
        queries_per_second=round(len(questions) / max(search_seconds, 1e-9), 1),
        seconds=round(time.time() - start, 1), run_dir=str(run_dir),
    )
    (run_dir / "summary.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_training(run_dir: Path, steps: int, overrides: tuple[str, ...] = ()
                 ) -> tuple[list[dict], list[dict]]:
    """The quickstart's GRPO run; returns its validation records (before and after) and its
    step records (``metrics.jsonl``)."""
    from research.trainers.config import load_config
    from research.trainers.trl_engine import train

    config = load_config("quickstart", [f"run.output_dir={run_dir / 'train'}",
                                        f"run.max_steps={steps}", f"run.eval_steps={steps}",
                                        f"run.save_steps={steps}", *overrides])
    out = train(config)
    steps_done = [m for m in _jsonl(out / "metrics.jsonl") if "loss" in m]
    return _jsonl(out / "validation.jsonl"), steps_done


def format_steps_table(steps: list[dict]) -> str:
    """One row per GRPO step: what the model sampled and how the reward scored it."""
    lines = ["| step | mean reward | exact share | valid share | groups with spread | "
             "searches / sample | response tokens | step s |", "|---" * 8 + "|"]
    for m in steps:
        cells = [m.get(k) for k in ("reward", "accuracy", "format_valid", "groups_with_spread",
                                    "searches_per_answer")]
        lines.append(f"| {m['step']} | " + " | ".join(
            "-" if v is None else f"{v:.2f}" for v in cells)
            + f" | {m.get('completions/mean_length', 0):.0f} | {m.get('step_time') or 0:.0f} |")
    return "\n".join(lines)


def format_training_table(validation: list[dict]) -> str:
    """Before / after rows of the dev-slice metrics."""
    lines = ["| step | questions | EM | F1 | reward | searches / answer | response tokens |",
             "|---|---|---|---|---|---|---|"]
    for v in validation:
        lines.append(f"| {v['step']} | {v['questions']} | {v['em']:.3f} | {v['f1']:.3f} | "
                     f"{v['reward']:.3f} | {v['searches_per_answer']:.2f} | "
                     f"{v['response_length']:.0f} |")
    return "\n".join(lines)


def format_table(r: QuickstartResult) -> str:
    return "\n".join([
        f"| dataset | questions | recall@{r.k} of the gold passage | queries/s over HTTP |",
        "|---|---|---|---|",
        f"| {r.dataset} (dev) | {r.questions} | {r.recall_at_k:.3f} | {r.queries_per_second} |",
    ])
