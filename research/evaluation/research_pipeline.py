"""The ReSearch pipeline: greedy search-interleaved rollouts, the last ``\\boxed{}`` inside
``<answer>`` as the prediction (empty on over-length or no box), scored with FlashRAG's
metrics. Used for validation during training and by the evaluation harness.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict

from research import protocol
from research.metrics import average_metrics, compute_metrics
from research.rollout.engine import COMPLETE_FINISHES, BatchSearcher, run_rollouts
from research.rollout.generation import Generator
from research.rollout.settings import RolloutSettings


def predict(text: str, finish_reason: str | None) -> str:
    """The prediction of one response: the boxed answer, empty on over-length or no box
    (a response ends properly at EOS, or at ``</answer>`` when the rollout stops there)."""
    if finish_reason not in COMPLETE_FINISHES:
        return ""
    return protocol.extract_answer(text) or ""


def evaluate(
    items: Sequence[dict],
    generator: Generator,
    tokenizer,
    searcher: BatchSearcher | None,
    settings: RolloutSettings,
    batch_size: int = 16,
    progress: bool = False,
    on_record: Callable[[int, dict], None] | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Greedy rollouts for ``items`` (``{"question", "golden_answers", ...}``) under
    ``settings`` (their temperature is ignored), ``batch_size`` questions together.

    Returns the averaged metrics (``em``, ``acc``, ``f1``, ``precision``, ``recall``,
    ``searches``, ``failures``, ``response_tokens``) and one record per item, in order.
    ``progress`` shows each batch's rollout line; ``on_record(i, record)`` gets the record
    of ``items[i]`` as soon as its rollout ends.
    """
    from research.rollout.progress import RolloutProgress

    greedy = settings.greedy()
    records: list[dict | None] = [None] * len(items)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        prompts = [greedy.encode_prompt(tokenizer, it["question"]) for it in chunk]

        def done(t, start=start, chunk=chunk):
            records[start + t.index] = record_of(chunk[t.index], t)
            if on_record is not None:
                on_record(start + t.index, records[start + t.index])

        with RolloutProgress(len(chunk), desc="research", enabled=progress) as bar:
            run_rollouts(prompts, generator, searcher, tokenizer, greedy, progress=bar,
                         on_finish=done)
    keys = ("em", "acc", "f1", "precision", "recall", "searches", "search_failures",
            "response_tokens")
    return average_metrics([{k: r[k] for k in keys} for r in records]), records


def record_of(item: dict, t) -> dict:
    """The evaluation record of one finished trajectory."""
    prediction = predict(t.text, t.finish_reason)
    return {
        "id": item.get("id"), "question": item["question"],
        "golden_answers": item["golden_answers"], "prediction": prediction,
        **t.summary(), "response_tokens": len(t.response_ids),
        "response": t.text, "turns": [asdict(turn) for turn in t.turns],
        "generated_tokens": len(t.inserted) - sum(t.inserted),
        **compute_metrics(prediction, item["golden_answers"]),
    }
