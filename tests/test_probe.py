"""The signal probe (benchmarks/probe.py): its table from known samples, and one real run
of the tiny model against the real service."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark


def record(reward, reason, queries=(), finish="answer", inserted=0, notices=0):
    return {"reward": reward, "reason": reason, "valid": not reason.startswith("bad format"),
            "correct": reason == "correct", "searches": len(queries),
            "empty_queries": sum(not q for q in queries),
            "repeated_queries": len(queries) - len(set(queries)),
            "turn_limit_notices": notices, "response_tokens": 10, "inserted_tokens": inserted,
            "finish_reason": finish}


def test_summary_counts_valid_spread_exact_and_queries():
    probe = load_benchmark("probe")
    records = [record(1.0, "correct", ["a"]), record(0.1, "wrong answer", ["a", "a"]),
               record(0.0, "bad format: no think tags", [""], finish="eos"),
               record(0.0, "bad format: no think tags", notices=1, finish="turns")]
    row = probe.summarise(records, samples=2, seconds=3.0)
    assert row["samples"] == 4 and row["questions"] == 2
    assert row["valid"] == 0.5  # the reward passes 2 of 4
    assert row["groups_with_spread"] == 0.5  # (1.0, 0.1) differ, (0, 0) do not
    assert row["groups_right_and_wrong"] == 0.5  # correct + wrong, then two wrong
    assert row["exact"] == 1 and row["mean_reward"] == pytest.approx(0.275, abs=1e-3)
    assert (row["empty_queries"], row["repeated_queries"], row["turn_limit_notices"]) == (1, 1, 1)
    assert row["never_search"] == 0.25 and row["searches"] == 1.0
    assert row["finish"] == {"answer": 2, "eos": 1, "turns": 1}
    assert row["reasons"]["bad format: no think tags"] == 2
    assert probe.table({"x": row}).splitlines()[-1].startswith(
        "| x | 0.5 | 0.5 | 0.5 | 1 | 0.275 |")


def test_a_setting_needs_a_name():
    import argparse

    probe = load_benchmark("probe")
    assert probe.parse_setting("a: rollout.top_k=1") == ("a", ["rollout.top_k=1"])
    with pytest.raises(argparse.ArgumentTypeError, match="NAME: key=value"):
        probe.parse_setting("rollout.top_k=1")


def test_probe_samples_every_setting_with_the_real_service(tiny_path, tmp_path, monkeypatch):
    probe = load_benchmark("probe")
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "probe.json"
    code = probe.main([
        "--config", "cpu-evidence", "--questions", "2", "--samples", "2",
        "--setting", "short: rollout.max_response_tokens=16",
        "--setting", "closed: rollout.search=false rollout.max_response_tokens=8",
        f"model.path={tiny_path}", "model.lora_rank=0", "grpo.bf16=false",
        "--out", str(tmp_path / "out"), "--results", str(results)])
    assert code == 0
    out = json.loads(results.read_text())
    assert list(out["settings"]) == ["short", "closed"]
    assert all(s["samples"] == 4 and s["questions"] == 2 for s in out["settings"].values())
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").open()]
    assert [s["setting"] for s in samples] == ["short"] * 4 + ["closed"] * 4
    assert all(s["response_tokens"] <= 16 for s in samples)
    assert all(s["searches"] == 0 for s in samples[4:])  # closed book never searches
    assert out["data"] == "factbook-facts" and out["data_type"] == "one-hop"


@pytest.mark.parametrize("cpu_has_bf16", [True, False])
def test_probe_samples_in_fp32_where_the_cpu_has_no_bf16(tiny_path, tmp_path, monkeypatch,
                                                          cpu_has_bf16):
    """grpo.bf16 samples under bf16 autocast, as the trainer does, unless the CPU has no bf16
    instructions: then in fp32 (bf16 matmuls there run hundreds of times slower)."""
    import research.models.loading as loading

    probe = load_benchmark("probe")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loading, "cpu_runs_bf16", lambda: cpu_has_bf16)
    results = tmp_path / "probe.json"
    assert probe.main([
        "--config", "cpu-evidence", "--questions", "1", "--samples", "2",
        "--setting", "short: rollout.max_response_tokens=8",
        f"model.path={tiny_path}", "model.lora_rank=0", "grpo.bf16=true",
        "--out", str(tmp_path / "out"), "--results", str(results)]) == 0
    row = json.loads(results.read_text())["settings"]["short"]
    assert row["bf16"] is cpu_has_bf16 and row["samples"] == 2
