"""The reliability benchmark (benchmarks/reliability.py) at a small size, every part real:
20 concurrent clients against the service with answers checked against sequential ones, a
restart during a search loop, a SIGKILLed evaluation and index build run again. Only
correctness is asserted (nothing lost, nothing redone, the same answers), never a speed."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark


@pytest.mark.slow  # about a minute: three service starts, two index builds, two evaluations
def test_nothing_is_lost_under_load_restart_and_kill(tmp_path):
    bench = load_benchmark("reliability")
    out = tmp_path / "reliability.json"
    assert bench.main(["--clients", "20", "--requests", "2", "--down", "2", "--build-docs",
                       "20000", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for size in ("batch_1", "batch_64"):
        assert r["load"][size]["requests"] == 40
        assert (r["load"][size]["lost"], r["load"][size]["differ_from_sequential"]) == (0, 0)
    restart = r["restart"]
    assert restart["sent"] == restart["answered"] > 0
    assert (restart["lost"], restart["differ"]) == (0, 0)
    kill = r["kill_eval"]
    assert kill["finished_after_rerun"] == kill["questions"] and kill["missing"] == 0
    assert kill["answered_twice"] == 0 and kill["before_kill_kept"]
    build = r["kill_build"]
    assert not build["killed_build_left_a_loadable_index"]
    assert build["rebuilt_answers_as_uninterrupted"]
