"""The scale benchmark (benchmarks/retrieval_scale.py) at a tiny size: every stage runs (the
real index build in a child, the real service on loopback), each is saved as it finishes, a
rerun with --resume redoes none of them, other settings redo them all, and the targets are
computed from the stages. No timing is asserted."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, load_benchmark


@pytest.fixture
def scale(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # it imports benchmarks/retrieval.py
    module = load_benchmark("retrieval_scale")
    monkeypatch.setattr(module, "_drop_page_cache", lambda: False)  # not the machine's cache
    return module


def tiny_args(scale, work, *extra):
    return scale.parse_args(["--docs", "300", "--queries", "192", "--budget", "0.2",
                             "--check", "4", "--peer-batches", "1", "--threads", "1",
                             "--work", str(work), *extra])


def counting(monkeypatch, scale, calls, stub_peer=True):
    """Count each stage function's calls (the bm25s peer replaced unless ``stub_peer`` is
    False: numba compiles it for a minute)."""
    for name in ("stage_corpus", "stage_build", "stage_serve", "stage_peer"):
        original = getattr(scale, name)
        if name == "stage_peer" and stub_peer:
            def original(args, index, queries, top):
                return {"batch_64": {"qps": 1.0}, "exact_queries": len(top),
                        "checked_queries": len(top)}

        def counted(*args, _name=name, _fn=original):
            calls.append(_name)
            return _fn(*args)

        monkeypatch.setattr(scale, name, counted)


def test_too_few_queries_for_a_timed_batch_is_refused(scale, capsys):
    with pytest.raises(SystemExit):
        scale.parse_args(["--queries", "70"])
    assert "at least 128" in capsys.readouterr().err


def test_stages_are_saved_and_a_resumed_run_redoes_none(scale, tmp_path, monkeypatch, capsys):
    calls: list[str] = []
    counting(monkeypatch, scale, calls)
    first = scale.run(tiny_args(scale, tmp_path, "--resume"))
    assert calls == ["stage_corpus", "stage_build", "stage_serve", "stage_serve", "stage_peer"]
    stages = {p.stem for p in (tmp_path / "stages").glob("*.json")}
    assert stages == {"corpus", "build", "serve_cold", "serve", "peer"}
    r = first["results"]
    assert r["build"]["doc_count"] == 300 and r["build"]["peak_rss_mb"] > 0
    assert r["serve"]["batch_64"]["n"] >= 1 and r["serve"]["batch_1"]["qps"] > 0
    assert r["serve_cold"]["page_cache_dropped"] is False
    assert len(r["serve"]["top"]) == 4 and all(len(top) <= 10 for top in r["serve"]["top"])

    calls.clear()
    again = scale.run(tiny_args(scale, tmp_path, "--resume"))
    assert calls == []  # every stage came from its saved file
    assert json.dumps(again["results"], sort_keys=True) == json.dumps(first["results"],
                                                                        sort_keys=True)
    assert capsys.readouterr().err.count("resumed from") == 5

    calls.clear()
    scale.run(tiny_args(scale, tmp_path, "--resume", "--k", "5"))  # other settings: redone
    assert calls == ["stage_corpus", "stage_build", "stage_serve", "stage_serve", "stage_peer"]
    targets = scale.targets(again)
    assert targets["exact top-k (service vs every document scored)"] == "4 of 4"
    assert targets["build peak RSS GB (target < 20)"] > 0


@pytest.mark.slow  # numba compiles bm25s' retrieve on first use
def test_the_service_top_k_is_exact_against_every_document_scored(scale, tmp_path, monkeypatch):
    calls: list[str] = []
    counting(monkeypatch, scale, calls, stub_peer=False)
    r = scale.run(tiny_args(scale, tmp_path))["results"]
    assert r["peer"]["checked_queries"] == 4
    assert r["peer"]["exact_queries"] == 4  # the MaxScore kernel against bm25s' full scores
    assert r["peer"]["batch_64"]["qps"] > 0
