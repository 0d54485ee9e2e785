"""The ReSearch evaluation pipeline: greedy rollouts, boxed predictions, FlashRAG metrics."""

from __future__ import annotations

import pytest
from test_rollout_engine import EOS, ByteTokenizer, FakeSearch

from research.evaluation.research_pipeline import evaluate, predict
from research.rollout.generation import Generation
from research.rollout.settings import RolloutSettings

ANSWERS = {
    "Who wrote Hamlet?": "<search> hamlet author </search>",
    "Capital of Peru?": " <answer> \\boxed{Lima} </answer>",
    "Longest river?": "<think>" + "x" * 200,  # never ends: over length
}


class ByQuestion:
    """Answers by the question found in the prompt; after a search, answers Shakespeare."""

    eos_token_ids = frozenset({EOS})

    def __init__(self):
        self.temperatures = set()

    def generate(self, prompts, params):
        out = []
        for prompt, p in zip(prompts, params, strict=True):
            self.temperatures.add(p.temperature)
            text = bytes(i for i in prompt if i < 256).decode()
            if "</result>" in text.rsplit("Assistant:", 1)[1]:  # the instruction has one too
                ids = list(b" <answer> \\boxed{William Shakespeare} </answer>") + [EOS]
            else:
                question = next(q for q in ANSWERS if f"User: {q}" in text)
                ids = list(ANSWERS[question].encode())
                ids += [EOS] if question == "Capital of Peru?" else []
            stop = ids[-1] != EOS and b"</search>" in bytes(ids)
            ids = ids[: p.max_new_tokens]
            reason = "stop" if stop else ("eos" if ids[-1] == EOS else "length")
            out.append(Generation(ids, [0.0] * len(ids), reason, "</search>" if stop else None))
        return out


def test_metrics_and_records():
    items = [{"id": str(i), "question": q, "golden_answers": g} for i, (q, g) in enumerate(
        [("Who wrote Hamlet?", ["Shakespeare", "William Shakespeare"]),
         ("Capital of Peru?", ["Lima"]), ("Longest river?", ["Nile"])])]
    gen = ByQuestion()
    metrics, records = evaluate(items, gen, ByteTokenizer(), FakeSearch(),
                                RolloutSettings(max_response_tokens=400, top_k=2,
                                                temperature=1.0), batch_size=2)
    assert gen.temperatures == {0.0}  # always greedy, whatever the rollout config says
    assert [r["prediction"] for r in records] == ["William Shakespeare", "Lima", ""]
    assert [r["searches"] for r in records] == [1, 0, 0]
    assert records[2]["finish_reason"] == "length"
    assert metrics["em"] == pytest.approx(2 / 3)
    assert metrics["searches"] == pytest.approx(1 / 3)
    assert records[0]["queries"] == ["hamlet author"]


@pytest.mark.parametrize(("text", "finish", "expected"), [
    ("<answer> \\boxed{A} </answer>", "eos", "A"),
    ("<answer> \\boxed{A} </answer>", "length", ""),
    ("<answer> no box </answer>", "eos", ""),
    ("\\boxed{outside} <answer> \\boxed{in} </answer>", "eos", "in"),
])
def test_prediction_rule(text, finish, expected):
    assert predict(text, finish) == expected


def test_validation_plot(tmp_path):
    import json

    pytest.importorskip("matplotlib")
    from research.trainers.plot import plot_validation

    assert plot_validation(tmp_path) is None  # nothing to draw yet
    rows = [{"step": s, "reward": 0.1 * s, "em": 0.05 * s, "f1": 0.08 * s,
             "response_length": 100 + 10 * s} for s in (0, 5, 10)]
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_validation(tmp_path)
    assert png == tmp_path / "validation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_closed_book_prompt_has_no_search_and_never_searches():
    search = FakeSearch()
    items = [{"question": q, "golden_answers": g}
             for q, g in [("Who wrote Hamlet?", ["Shakespeare"]), ("Capital of Peru?", ["Lima"])]]
    metrics, records = evaluate(items, ByQuestion(), ByteTokenizer(), search,
                                RolloutSettings(max_response_tokens=64, search=False),
                                batch_size=2)
    assert search.calls == []
    assert [r["finish_reason"] for r in records] == ["turns", "eos"]  # a search request ends it
    assert [r["prediction"] for r in records] == ["", "Lima"]
    assert metrics["searches"] == 0.0 and metrics["em"] == 0.5
