"""The references table (benchmarks/references.py): the scripted policies through the real
runner and service, the rows of an evidence run's per-question file, and the intervals."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark


def test_scripted_rows_and_an_evidence_runs_rows_share_one_table(tmp_path):
    refs = load_benchmark("references")
    lines = tmp_path / "learning_dev.jsonl"
    lines.write_text("".join(json.dumps(x) + "\n" for x in [
        {"arm": "search", "stage": "after", "type": "bridge", "em": 1.0, "f1": 1.0,
         "queries": ["capital is Lima", "Peru area"]},
        {"arm": "search", "stage": "after", "type": "bridge", "em": 0.0, "f1": 0.0,
         "queries": ["q"]},
        {"arm": "closed-book", "stage": "before", "type": "one-hop", "em": 0.0, "f1": 0.5,
         "queries": []}]))
    results = tmp_path / "references.json"
    assert refs.main(["--methods", "one-search-rule", "--datasets", "factbook-facts:one-hop",
                      "--sample", "6", "--out", str(tmp_path / "runs"), "--results",
                      str(results), "--learning", str(lines)]) == 0
    rows = json.loads(results.read_text())["rows"]
    rule = rows["One-search rule (scripted)"]["factbook-facts:one-hop"]
    assert (rule["em"], rule["questions"], rule["searches_per_answer"]) == (1.0, 6, 1.0)
    trained = rows["ReSearch (trained)"]["factbook-facts:bridge"]
    assert (trained["em"], trained["searches_per_answer"], trained["questions"]) == (0.5, 1.5, 2)
    assert rows["Closed book (untrained)"]["factbook-facts:one-hop"]["f1"] == 0.5
    per_question = (tmp_path / "references_dev.jsonl").read_text().splitlines()
    assert len(per_question) == 6
    table = refs.table(rows, ["factbook-facts:bridge", "factbook-facts:one-hop"])
    assert "| One-search rule (scripted) | - | 100.0 [100.0, 100.0] (n=6) |" in table


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_questions():
    refs = load_benchmark("references")
    small = refs.bootstrap([1.0, 0.0] * 10)
    large = refs.bootstrap([1.0, 0.0] * 200)
    assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
    assert large[1] - large[0] < small[1] - small[0]
    assert refs.bootstrap([]) == [0.0, 0.0]
    assert refs.cell([{"em": 1.0, "f1": 1.0, "searches": 2}])["em_ci95"] == [1.0, 1.0]
    with pytest.raises(KeyError):
        refs.cell([{"em": 1.0}])


def test_a_second_evidence_runs_rows_keep_apart_from_the_first(tmp_path):
    refs = load_benchmark("references")
    lines = tmp_path / "learning_dev.jsonl"
    lines.write_text(json.dumps({"arm": "search", "stage": "after", "type": "bridge",
                                 "em": 1.0, "f1": 1.0, "queries": ["a", "b"]}) + "\n")
    rows = {row: dataset for row, dataset, _, _ in refs.learning_rows(lines, ", seed 7")}
    assert rows == {"ReSearch (trained, seed 7)": "factbook-facts:bridge"}
    assert [r for r, *_ in refs.learning_rows(lines)] == ["ReSearch (trained)"]
