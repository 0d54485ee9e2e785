"""The generation benchmark (benchmarks/generation.py) on the tiny model: the matmul and
memory limits and the project's backend, each row's ratio to its limit, and a peer that is
not built reported as missing with the command that builds it. No timing is asserted."""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_limits_and_the_backend_are_measured_side_by_side(tiny_path, tmp_path, monkeypatch):
    gen = load_benchmark("generation")
    monkeypatch.setenv("PEERS", str(tmp_path / "no-peers"))
    results = tmp_path / "generation.json"
    assert gen.main(["--model", str(tiny_path), "--batches", "1", "2", "--prompt", "24",
                     "--new", "5", "--systems", "limit", "hf", "hf-int8", "llama.cpp",
                     "--threads", "1",
                     "--dtypes", "float32", "--results", str(results)]) == 0
    r = json.loads(results.read_text())
    assert (r["prompt_tokens"], r["new_tokens"], r["threads"]) == (24, 5, 1)
    rows = {(x["system"], x["batch"]): x for x in r["rows"]}
    assert set(rows) == {(s, b) for b in (1, 2) for s in (
        "limit: roofline (weight bytes / read bandwidth, FLOPs / GEMM rate)",
        "torch: the decode step's matmuls alone",
        "HFGenerator (this project)", "torch: the int8 copy's matmuls alone",
        "HFGenerator on the int8 copy (grpo.rollout_int8)")}
    for b in (1, 2):
        hf = rows["HFGenerator (this project)", b]
        limit = rows["limit: roofline (weight bytes / read bandwidth, FLOPs / GEMM rate)", b]
        assert hf["decode_tok_per_s"] > 0 and hf["prefill_tok_per_s"] > 0
        share = hf["decode_tok_per_s"] / limit["decode_tok_per_s"]
        assert abs(hf["share_of_limit"] - share) < 0.01 * max(1.0, share)
        assert limit["weight_mb"] > 0 and limit["bound"] in ("memory", "compute")
        assert rows["torch: the decode step's matmuls alone", b]["matmul_gflops"] > 0
        int8 = rows["HFGenerator on the int8 copy (grpo.rollout_int8)", b]
        assert int8["dtype"] == "int8" and int8["decode_tok_per_s"] > 0
        assert abs(int8["share_of_limit"] - int8["decode_tok_per_s"]
                   / limit["decode_tok_per_s"]) < 0.01 * max(1.0, int8["share_of_limit"])
    gap = r["int8_logprob_gap"]
    assert gap["tokens"] == 2 * 5 and 0 < gap["mean_abs_logprob_gap"] < 1
    assert 0 <= gap["greedy_token_agreement"] <= 1
    assert r["conversions"]["int8 copy (torch dynamic, per channel)"] >= 0
    assert r["missing"] == {"llama.cpp": "bash scripts/setup_generation_peers.sh"}
    assert r["read_bandwidth_gb_s"] > 0 and r["gemm_gflops"]["float32"] > 0


def test_prompts_are_different_and_exactly_as_long_as_asked(tiny_path):
    from transformers import AutoTokenizer

    gen = load_benchmark("generation")
    ids = gen.prompts(AutoTokenizer.from_pretrained(tiny_path), 3, 50)
    assert [len(x) for x in ids] == [50, 50, 50] and len({tuple(x) for x in ids}) == 3
