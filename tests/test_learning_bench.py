"""The evidence run (benchmarks/learning.py) end to end on the tiny model against the real
service: both arms train, every dev question is scored before and after, the summary is the
per-question file's arithmetic, and a rerun resumes without training or scoring again."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark, write_alpha_questions


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def run_args(tiny_path, service_url, tmp_path):
    questions = write_alpha_questions(tmp_path / "questions.jsonl", 4, typed=True)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"model: {{path: {tiny_path}}}\n"
        f"data: {{train: {questions}, dev: {questions}, dev_limit: 2}}\n"
        f"retrieval: {{search_url: {service_url}}}\n"
        "rollout: {max_response_tokens: 16, max_turns: 1, top_k: 1, max_result_tokens: 12, "
        "example: null}\n"
        "reward: {name: f1}\n"
        "grpo: {prompts_per_step: 2, num_generations: 2, per_device_batch: 2, "
        "learning_rate: 1.0e-3}\n"
        "run: {max_steps: 1, save_steps: 1, eval_steps: 1, torch_threads: 1}\n")
    return ["--config", str(config), "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "learning.json"),
            "--figure", str(tmp_path / "learning.png")]


def test_both_arms_are_scored_on_every_dev_question_and_resume(run_args, tmp_path, monkeypatch):
    learning = load_benchmark("learning")
    assert learning.main(run_args) == 0
    results = json.loads((tmp_path / "learning.json").read_text())
    lines = jsonl(tmp_path / "learning_dev.jsonl")
    assert results["dev_questions"] == 4 and set(results["arms"]) == {"search", "closed-book"}
    assert (tmp_path / "runs" / "search" / "scoring").is_dir()
    assert len(lines) == 2 * 2 * 4  # arms x stages x every dev question (not dev_limit)
    keys = {"arm", "stage", "id", "type", "question", "golden_answers", "prediction", "em",
            "queries", "doc_ids", "response"}
    assert all(keys <= set(x) for x in lines)
    assert all(len(x["queries"]) == len(x["doc_ids"]) for x in lines)
    assert all(x["queries"] == [] for x in lines if x["arm"] == "closed-book")
    for arm, figures in results["arms"].items():
        assert figures["steps"] == 1
        for stage in ("before", "after"):
            mine = [x for x in lines if (x["arm"], x["stage"]) == (arm, stage)]
            assert figures[f"dev_em_{stage}"] == pytest.approx(
                sum(x["em"] for x in mine) / len(mine), abs=1e-4)
            for kind in ("one-hop", "bridge"):
                typed = [x for x in mine if x["type"] == kind]
                assert len(typed) == 2
                assert figures["dev_by_type"][kind][f"em_{stage}"] == pytest.approx(
                    sum(x["em"] for x in typed) / 2, abs=1e-4)
                assert figures["dev_by_type"][kind][f"searches_per_answer_{stage}"] == (
                    pytest.approx(sum(len(x["queries"]) for x in typed) / 2, abs=1e-4))
    assert "bridge: second query names the entity" in learning.table(results)
    assert (tmp_path / "learning.png").stat().st_size > 1000

    # a rerun trains nothing and scores nothing again: same lines, same summary
    import research.trainers.trl_engine as engine

    monkeypatch.setattr(engine, "train", lambda config: pytest.fail("trained again"))
    monkeypatch.setattr(learning, "score_dev", _only_reads(learning.score_dev))
    assert learning.main(run_args) == 0
    assert jsonl(tmp_path / "learning_dev.jsonl") == lines


def _only_reads(score_dev):
    def wrapped(*args):
        import research.models.loading as loading

        original = loading.load_model
        loading.load_model = lambda *a, **k: pytest.fail("scored again")
        try:
            return score_dev(*args)
        finally:
            loading.load_model = original
    return wrapped
