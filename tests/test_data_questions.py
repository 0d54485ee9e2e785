"""The one question loader: embedded names, rows parquet and FlashRAG jsonl, kind and limit
(its docstring example runs in test_doctests.py)."""

from __future__ import annotations

import json

import pytest

from research.data import embedded
from research.data.questions import load_questions
from research.data.rows import make_row, write_rows


def test_an_embedded_name_reads_its_split():
    assert load_questions("factbook-hop", "train") == embedded.read_split("factbook-hop", "train")
    assert load_questions("factbook-hop") == embedded.read_split("factbook-hop", "dev")


def test_a_rows_parquet_gives_ids_and_answer_lists(tmp_path):
    path = tmp_path / "train.parquet"
    write_rows([make_row("q1?", "Ann", id="a", data_source="x", index=0),
                make_row("q2?", "Bo", id="b", data_source="x", index=1)], path)
    assert load_questions(path) == [
        {"id": "a", "question": "q1?", "golden_answers": ["Ann"]},
        {"id": "b", "question": "q2?", "golden_answers": ["Bo"]}]


def test_a_flashrag_jsonl_keeps_metadata_and_filters_by_kind_before_the_limit(tmp_path):
    path = tmp_path / "dev.jsonl"
    kinds = ["bridge", "comparison", "bridge", "bridge"]
    path.write_text("".join(json.dumps({"id": i, "question": f"q{i}?", "golden_answers": "x",
                                        "metadata": {"type": k}}) + "\n"
                            for i, k in enumerate(kinds)))
    rows = load_questions(str(path))
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[1] == {"id": "1", "question": "q1?", "golden_answers": ["x"],
                       "metadata": {"type": "comparison"}}
    assert [r["id"] for r in load_questions(path, kind="bridge", limit=2)] == ["0", "2"]
    assert load_questions(path, kind="other") == []
    assert len(load_questions(path, limit=0)) == 4


def test_an_unknown_name_lists_the_embedded_sets():
    with pytest.raises(ValueError, match="squad-open-mini"):
        load_questions("nope")
