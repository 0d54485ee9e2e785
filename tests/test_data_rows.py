"""Row schema: build, validate, golden answers, parquet round trip, dev sampling."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from research.data.rows import (
    DataFormatError,
    RowValidationError,
    golden_answers,
    iter_rows,
    make_row,
    read_rows,
    sample_indices,
    validate_row,
    write_rows,
)


def _row(**overrides):
    row = {
        "data_source": "hotpotqa",
        "question": "Which magazine was started first?",
        "ability": "qa",
        "reward_model": {"style": "rule", "ground_truth": "Arthur's Magazine"},
        "extra_info": {"id": "5a7a06935542990198eaf050", "index": 0},
    }
    row.update(overrides)
    return row


def test_make_row_has_exactly_the_protocol_fields():
    row = make_row("Who?", "Ann", id="q1", index=3)
    assert row == {
        "data_source": "hotpotqa",
        "question": "Who?",
        "ability": "qa",
        "reward_model": {"style": "rule", "ground_truth": "Ann"},
        "extra_info": {"id": "q1", "index": 3},
    }
    assert list(row) == ["data_source", "question", "ability", "reward_model", "extra_info"]


def test_make_row_keeps_a_list_of_answers_as_a_list():
    row = make_row("Who?", ("Ann", "Anne"), id="q1", data_source="bamboogle")
    assert row["reward_model"]["ground_truth"] == ["Ann", "Anne"]
    assert row["data_source"] == "bamboogle"


@pytest.mark.parametrize(
    ("truth", "expected"),
    [
        ("Ann", ["Ann"]),
        (["Ann", "Anne"], ["Ann", "Anne"]),
        (("Ann",), ["Ann"]),
        (np.array(["Ann", "Anne"], dtype=object), ["Ann", "Anne"]),
    ],
)
def test_golden_answers_accepts_both_forms(truth, expected):
    assert golden_answers({"reward_model": {"ground_truth": truth}}) == expected


def test_golden_answers_rejects_other_types():
    with pytest.raises(RowValidationError, match="reward_model.ground_truth"):
        golden_answers({"reward_model": {"ground_truth": 3}})


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({k: v for k, v in _row().items() if k != "question"}, "question"),
        (_row(question=""), "question"),
        (_row(question=7), "question"),
        (_row(data_source=None), "data_source"),
        (_row(reward_model={"style": "model", "ground_truth": "x"}), "reward_model.style"),
        (_row(reward_model={"style": "rule"}), "reward_model.ground_truth"),
        (_row(reward_model={"style": "rule", "ground_truth": []}), "reward_model.ground_truth"),
        (
            _row(reward_model={"style": "rule", "ground_truth": ["a", 1]}),
            "reward_model.ground_truth",
        ),
        (_row(reward_model={"style": "rule", "ground_truth": 1.5}), "reward_model.ground_truth"),
        (_row(extra_info={"index": 1}), "extra_info.id"),
        (_row(extra_info={"id": 12}), "extra_info.id"),
        (_row(extra_info={"id": "a", "index": "1"}), "extra_info.index"),
        (_row(extra_info=None), "extra_info"),
    ],
)
def test_validate_row_names_the_bad_field(row, field):
    with pytest.raises(RowValidationError, match=f"field '{field}'") as info:
        validate_row(row)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_validate_row_accepts_the_original_row_without_index():
    row = _row(extra_info={"id": "x"})
    validate_row(row)
    assert golden_answers(row) == ["Arthur's Magazine"]


@pytest.mark.parametrize("truth", ["Ann", ["Ann", "Anne"]])
def test_parquet_round_trip(tmp_path, truth):
    rows = [make_row(f"q{i}?", truth, id=f"id{i}", index=i) for i in range(5)]
    path = tmp_path / "sub" / "rows.parquet"
    assert write_rows(rows, path) == 5
    assert read_rows(path) == rows
    assert list(iter_rows(path, batch_size=2)) == rows
    assert [p.name for p in path.parent.iterdir()] == ["rows.parquet"]


def test_parquet_columns_match_the_original_layout(tmp_path):
    path = tmp_path / "rows.parquet"
    write_rows([make_row("q?", "a", id="1", index=0)], path)
    schema = pq.read_schema(path)
    assert schema.names == ["data_source", "question", "ability", "reward_model", "extra_info"]
    assert schema.field("reward_model").type == pa.struct(
        [("style", pa.string()), ("ground_truth", pa.string())]
    )


def test_write_refuses_mixed_ground_truth_forms(tmp_path):
    rows = [make_row("a?", "x", id="1"), make_row("b?", ["y"], id="2")]
    with pytest.raises(RowValidationError, match="row 1.*golden_answers"):
        write_rows(rows, tmp_path / "rows.parquet")
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "rows.parquet"
    write_rows([make_row("a?", "x", id="1")], path)
    with pytest.raises(RowValidationError, match="row 1"):
        write_rows([make_row("b?", "y", id="2"), _row(question="")], path)
    assert read_rows(path)[0]["question"] == "a?"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.parquet"]


def test_write_refuses_no_rows(tmp_path):
    with pytest.raises(DataFormatError, match="no rows"):
        write_rows([], tmp_path / "rows.parquet")


def test_read_names_file_and_row_of_a_bad_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([_row(), _row(question="")]), path)
    with pytest.raises(RowValidationError, match=r"bad\.parquet, row 1: field 'question'"):
        read_rows(path)


def test_sample_indices_reproduces_the_original_shuffle():
    records = [{"_id": f"r{i}"} for i in range(257)]
    original = list(records)
    random.Random(42).shuffle(original)
    expected = [r["_id"] for r in original[:100]]
    assert [records[i]["_id"] for i in sample_indices(257, 100, 42)] == expected
    assert sample_indices(257, None, 42)[:100] == sample_indices(257, 100, 42)
    assert sample_indices(257, 100, 7) != sample_indices(257, 100, 42)
