"""Long work reports as it goes: the rollout's progress line hears every decode step of the
Hugging Face backend (tiny model) before the rollout ends, and an evaluation writes each
finished question at once, so one stopped mid-batch resumes without redoing it."""

from __future__ import annotations

import io
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_evaluation import Scripted, write_dataset  # noqa: E402

from research.evaluation.config import load_config  # noqa: E402
from research.evaluation.runner import read_records, run  # noqa: E402
from research.rollout.backends.hf import HFGenerator  # noqa: E402
from research.rollout.engine import run_rollouts  # noqa: E402
from research.rollout.progress import RolloutProgress  # noqa: E402
from research.rollout.settings import RolloutSettings  # noqa: E402


class Recording(RolloutProgress):
    """Keeps every report, in order."""

    def __init__(self, total):
        super().__init__(total, enabled=False)
        self.events: list[tuple] = []

    def tokens(self, n):
        self.events.append(("tokens", n))
        super().tokens(n)

    def update(self, trajectories, turn):
        self.events.append(("turn", turn, sum(t.finish_reason is not None for t in trajectories)))
        super().update(trajectories, turn)


class NoSearch:
    def batch_search(self, queries, k):
        return [[] for _ in queries]


def test_the_progress_line_moves_inside_a_turn(tiny):
    model, tok = tiny
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("Once upon", "The sea", "A")]
    progress = Recording(len(prompts))
    out = run_rollouts(prompts, HFGenerator(model, tok), NoSearch(), tok,
                       RolloutSettings(max_response_tokens=12, temperature=0), progress=progress)
    first_turn_end = progress.events.index(next(e for e in progress.events if e[0] == "turn"))
    assert first_turn_end >= 5  # decode steps were reported before the first turn ended
    sampled = sum(e[1] for e in progress.events if e[0] == "tokens")
    assert sampled == sum(sum(t.loss_mask) for t in out) == progress.sampled
    assert progress.events[-1] == ("turn", progress.turn, 3) and progress.active == 0


def test_the_line_is_drawn_with_its_counts():
    sink = io.StringIO()
    progress = RolloutProgress(2, desc="rollout", file=sink, every=0)
    progress.tokens(7)

    class T:
        finish_reason, turns = "eos", [object()]

    class U:
        finish_reason, turns = None, []

    progress.update([T(), U()], 1)
    line = [d for d in sink.getvalue().split("\r") if "rollout" in d][-1]
    progress.close()
    assert "1/2" in line and "active=1" in line and "searches=1" in line and "tok/s=" in line


def test_a_stopped_evaluation_resumes_without_redoing_finished_questions(tiny, service_url,
                                                                         tmp_path):
    tok = tiny[1]
    rows = [{"id": "fast", "question": "Capital of Peru?", "golden_answers": ["Lima"]},
            {"id": "slow", "question": "Capital of Chile?", "golden_answers": ["Santiago"]}]
    data = write_dataset(tmp_path / "data", "capitals", rows)
    config = load_config(None, [f"data.data_dir={data}", "data.dataset_name=capitals",
                                f"run.save_dir={tmp_path}/o", "method.name=research",
                                f"retrieval.search_url={service_url}",
                                "rollout.max_response_tokens=128"])

    def crash_on_turn_two(text, i):
        if "Peru" in text.rsplit("User:", 1)[1]:
            return " <answer> \\boxed{Lima} </answer>", None
        if i >= 2:  # "slow" searched in turn 1; the machine goes down during its turn 2
            raise KeyboardInterrupt
        return "<search> chile </search>", None

    gen = Scripted(tok, crash_on_turn_two)
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False, backend=(gen, tok))
    out = tmp_path / "o" / "capitals_dev_research"
    assert [r["id"] for r in read_records(out / "items.jsonl")] == ["fast"]  # on disk already

    again = Scripted(tok, lambda text, i: (" <answer> \\boxed{Santiago} </answer>", None))
    run(config, progress=False, backend=(again, tok))
    assert len(again.calls) == 1 and "Chile" in again.calls[0][0]  # only the unfinished one
    records = read_records(out / "items.jsonl")
    assert sorted(r["id"] for r in records) == ["fast", "slow"]
    assert {r["id"]: r["prediction"] for r in records} == {"fast": "Lima", "slow": "Santiago"}
    assert json.loads((out / "metrics.json").read_text())["questions"] == 2


def test_in_a_log_file_the_line_moves_no_cursor_under_another_bar():
    from tqdm import tqdm

    sink = io.StringIO()
    with tqdm(total=4, desc="GRPO", file=sink):
        progress = RolloutProgress(2, desc="rollout", file=sink, every=0)
        progress.tokens(3)
        progress.close()
    assert "rollout" in sink.getvalue() and "\x1b[A" not in sink.getvalue()
