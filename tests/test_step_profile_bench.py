"""The step profile (benchmarks/step_profile.py) on the tiny model against the real service:
one real GRPO step, every timed part present with its calls, the shares a fraction of the
step, and the run's settings written beside them."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark, write_alpha_questions

pytest.importorskip("trl", reason="the TRL engine is optional: pip install trl==1.16.0")
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*gradient_checkpointing` is deprecated:FutureWarning")


def test_one_step_is_split_into_its_timed_parts(tiny_path, service_url, tmp_path):
    profile = load_benchmark("step_profile")
    questions = write_alpha_questions(tmp_path / "questions.jsonl", 4, typed=True)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"model: {{path: {tiny_path}}}\n"
        f"data: {{train: {questions}, dev: null}}\n"
        f"retrieval: {{search_url: {service_url}}}\n"
        "rollout: {max_response_tokens: 16, max_turns: 1, top_k: 1, max_result_tokens: 12, "
        "example: null}\n"
        "grpo: {prompts_per_step: 2, num_generations: 2, per_device_batch: 2}\n"
        "run: {torch_threads: 1}\n")
    results = tmp_path / "step_profile.json"
    assert profile.main(["--config", str(config), "--out", str(tmp_path / "run"),
                         "--results", str(results)]) == 0
    r = json.loads(results.read_text())
    assert (r["steps"], r["trajectories_per_step"], r["micro_batches_per_step"]) == (1, 4, 2)
    assert r["model"] == str(tiny_path) and r["bf16"] in (True, False)
    parts = r["parts"]
    assert {"rollout: generation (prefill + decode)",  # (the random tiny model may not search)
            "rollout + rewards + TRL's scoring passes", "TRL log-prob passes",
            "loss (forward with gradient)", "backward"} <= set(parts)
    assert parts["loss (forward with gradient)"]["calls"] == 2  # one per micro-batch
    assert parts["backward"]["calls"] == 2
    # the rollout holds its generation and searches; no part is longer than the step
    searches = parts.get("rollout: search requests", {"seconds": 0.0})["seconds"]
    assert (parts["rollout: generation (prefill + decode)"]["seconds"] + searches
            <= parts["rollout + rewards + TRL's scoring passes"]["seconds"])
    for part in parts.values():
        assert part["calls"] >= 1 and 0 < part["share_of_steps"] <= 1.0
    assert r["total_seconds"] > 0
    [step] = r["per_step"]  # what the step sampled, from the run's metrics.jsonl
    assert step["step"] == 1 and 0 < step["completions/mean_length"] <= 16
    assert not any(k.startswith("rollout_correction/") for k in step)  # fp32 rollout


def test_step_facts_keep_the_int8_correction():
    import tempfile
    from pathlib import Path

    profile = load_benchmark("step_profile")
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        metrics.write_text(json.dumps({"step": 1, "loss": 0.1, "reward": 0.25,
                                       "completions/mean_length": 150.1875,
                                       "rollout_correction/gap": 0.161226, "lr": 1}) + "\n"
                           + json.dumps({"step": 1, "train_runtime": 9}) + "\n")
        assert profile.step_facts(metrics) == [{"step": 1, "completions/mean_length": 150.1875,
                                                "reward": 0.25,
                                                "rollout_correction/gap": 0.1612}]
