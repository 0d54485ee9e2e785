"""The retrieval benchmark's helpers (benchmarks/retrieval.py): the tie-aware overlap, the
ratios, resuming a stage, skipping Lucene without its interpreter, and one real bm25s child
on a tiny corpus. No timing is asserted."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("retrieval")


def test_overlap_counts_ties_with_the_reference_kth_as_shared(bench):
    reference = [["1", "2", "3"], ["4", "5"]]  # query 0: "2" and "3" tie at the 2nd place
    assert bench.overlap([["1", "3"], ["4", "9"]], reference, k=2) == 0.75
    assert bench.overlap([["1"]], [["1"]], k=10) == 1.0  # one match only: not counted short
    with pytest.raises(ValueError):
        bench.overlap([["1"]], [], k=1)


def test_tied_top_keeps_every_document_tied_with_the_kth(bench):
    scores = np.array([0.5, 2.0, 1.0, 1.0, 0.0, 1.0])
    assert bench.tied_top(scores, k=2).tolist() == [1, 2, 3, 5]
    assert bench.tied_top(np.array([0.0, 3.0]), k=2).tolist() == [1]  # no zero scores


def test_tie_share_counts_queries_with_ties_past_the_kth(bench):
    r = {"bm25s": {"tied_ids": [["1", "2", "3"], ["4", "5"]]}}
    assert bench.tie_share(r, k=2) == 0.5 and bench.tie_share({}, k=2) is None


def test_ratios_against_each_peer(bench):
    def m(qps, build, mem):
        return {"qps_b1": qps, "qps_b64": 2 * qps, "cpu_qps_b1": qps, "cpu_qps_b64": 4 * qps,
                "build_s": build, "build_cpu_s": build, "build_peak_rss_mb": mem,
                "search_peak_rss_mb": mem}

    r = bench.ratios({"service": m(100, 10, 500), "bm25s": m(200, 20, 1000),
                      "lucene": m(50, 40, 250)})
    assert r["service/bm25s qps b64"] == 0.5 and r["service/lucene qps b1"] == 2.0
    assert r["service/lucene cpu qps b64"] == 2.0 and r["service/lucene build cpu s"] == 0.25
    assert r["service/lucene build s"] == 0.25 and r["service/lucene build peak RSS"] == 2.0
    assert "service/rank_bm25 qps b1" not in r


def test_resume_reuses_a_stage_with_the_same_settings_only(bench, tmp_path, monkeypatch):
    runs = []
    monkeypatch.setattr(bench, "_in_child",
                        lambda system, spec, python: runs.append(spec["k"]) or {"qps_b1": 2.0})
    spec = {"corpus": "c.jsonl", "k": 10, "queries": ["a b"], "work": str(tmp_path)}
    stage = tmp_path / "stages" / "10-bm25s.json"
    stage.parent.mkdir()
    stage.write_text(json.dumps({"settings": {"corpus": "c.jsonl", "k": 10},
                                 "result": {"qps_b1": 1.0}}))
    assert bench.run_stage("bm25s", spec, stage, True, "python") == {"qps_b1": 1.0}
    assert runs == []
    assert bench.run_stage("bm25s", {**spec, "k": 5}, stage, True, "python")["qps_b1"] == 2.0
    assert runs == [5]  # k differs: measured again, and saved for the next resume
    assert json.loads(stage.read_text())["settings"]["k"] == 5


def test_lucene_is_skipped_with_the_fix_when_its_interpreter_is_absent(bench, tmp_path, capsys):
    args = argparse.Namespace(systems=["bm25s", "lucene"],
                              lucene_python=str(tmp_path / "none" / "python"))
    assert bench._systems(args) == ["bm25s"]
    assert "scripts/setup_lucene.sh" in capsys.readouterr().err


@pytest.mark.slow  # numba compiles bm25s' top-k on first use
def test_bm25s_child_returns_ids_and_the_tied_reference(bench, tmp_path):
    corpus = bench.make_corpus(tmp_path / "tiny.jsonl", 300)
    queries = bench.make_queries(corpus, 8)
    spec = {"corpus": str(corpus), "n_docs": 300, "queries": queries, "budget": 0.01, "k": 5,
            "threads": 1, "work": str(tmp_path)}
    result = bench._in_child("bm25s", spec, bench.sys.executable)
    assert len(result["top_ids"]) == len(result["tied_ids"]) == 8
    assert bench.overlap(result["top_ids"], result["tied_ids"], 5) == 1.0
    assert result["qps_b1"] > 0 and result["build_peak_rss_mb"] > 0
