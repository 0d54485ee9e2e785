"""FlashRAG jsonl: reader, conversion to rows, folder layout, the data command."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from research.data import commands
from research.data.flashrag import (
    FlashRAGFormatError,
    FlashRAGLayoutError,
    available_splits,
    convert_flashrag,
    flashrag_path,
    load_flashrag_jsonl,
)
from research.data.rows import golden_answers, read_rows


def _records(n: int, prefix: str = "test") -> list[dict]:
    return [
        {
            "id": f"{prefix}_{i}",
            "question": f"Who wrote book {i}?",
            "golden_answers": [f"Author {i}", f"A. {i}"] if i % 2 else ["yes"],
            "metadata": {"hop": i % 3, "tags": ["x"] * (i % 2)},
        }
        for i in range(n)
    ]


def _write_jsonl(path: Path, records, extra_lines=()) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra_lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_streams_records_skips_blank_lines_and_strings_ids(tmp_path):
    path = _write_jsonl(
        tmp_path / "d.jsonl",
        _records(3),
        ["", '{"id": 7, "question": "q?", "golden_answers": "only"}'],
    )
    records = list(load_flashrag_jsonl(path))
    assert [r["id"] for r in records] == ["test_0", "test_1", "test_2", "7"]
    assert records[1]["golden_answers"] == ["Author 1", "A. 1"]
    assert records[3]["golden_answers"] == ["only"]
    assert records[0]["metadata"] == {"hop": 0, "tags": []}


@pytest.mark.parametrize(
    ("bad_line", "pattern"),
    [
        ('{"id": "x", "question": "q?", "golden_answers": ["a"]', "malformed JSON"),
        ('["not", "an", "object"]', "expected a JSON object, got list"),
        ('{"id": "x", "question": "q?"}', "no 'golden_answers' field"),
        ('{"question": "q?", "golden_answers": ["a"]}', "no 'id' field"),
        ('{"id": "x", "golden_answers": ["a"]}', "no 'question' field"),
        ('{"id": "x", "question": "q?", "golden_answers": []}', "non-empty list of strings"),
        ('{"id": "x", "question": "q?", "golden_answers": [1]}', "non-empty list of strings"),
        ('{"id": true, "question": "q?", "golden_answers": ["a"]}', "'id' must be"),
        ('{"id": "x", "question": "  ", "golden_answers": ["a"]}', "'question' must be"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, bad_line, pattern):
    path = _write_jsonl(tmp_path / "bad.jsonl", _records(2), ["", bad_line])
    with pytest.raises(FlashRAGFormatError, match=pattern) as info:
        list(load_flashrag_jsonl(path))
    assert f"{path}, line 4" in str(info.value)
    assert "Fix:" in str(info.value)


def test_convert_writes_rows_with_the_dataset_name(tmp_path):
    path = _write_jsonl(tmp_path / "bamboogle" / "test.jsonl", _records(5))
    summary = convert_flashrag(path, "bamboogle", tmp_path / "b.parquet", progress=False)
    rows = read_rows(tmp_path / "b.parquet")
    assert (summary.rows, summary.total) == (5, 5)
    assert rows[1] == {
        "data_source": "bamboogle",
        "question": "Who wrote book 1?",
        "ability": "qa",
        "reward_model": {"style": "rule", "ground_truth": ["Author 1", "A. 1"]},
        "extra_info": {"id": "test_1", "index": 1},
    }
    assert [golden_answers(r) for r in rows][:2] == [["yes"], ["Author 1", "A. 1"]]


def test_convert_keeps_metadata_as_json_when_asked(tmp_path):
    path = _write_jsonl(tmp_path / "musique.jsonl", _records(4))
    convert_flashrag(path, "musique", tmp_path / "m.parquet", keep_metadata=True, progress=False)
    rows = read_rows(tmp_path / "m.parquet")
    assert [json.loads(r["extra_info"]["metadata"]) for r in rows] == [
        r["metadata"] for r in _records(4)
    ]


def test_convert_sample_uses_the_seeded_shuffle(tmp_path):
    records = _records(60)
    path = _write_jsonl(tmp_path / "dev.jsonl", records)
    convert_flashrag(path, "musique", tmp_path / "s.parquet", sample=10, progress=False)
    shuffled = list(records)
    random.Random(42).shuffle(shuffled)
    ids = [r["extra_info"]["id"] for r in read_rows(tmp_path / "s.parquet")]
    assert ids == [r["id"] for r in shuffled[:10]]


def test_convert_refuses_an_empty_file_and_bad_name(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(FlashRAGFormatError, match="empty.jsonl: holds no records"):
        convert_flashrag(empty, "nq", tmp_path / "o.parquet", progress=False)
    with pytest.raises(ValueError, match="dataset name"):
        convert_flashrag(empty, "two words", tmp_path / "o.parquet", progress=False)


def test_layout_finds_splits_and_lists_what_exists(tmp_path):
    _write_jsonl(tmp_path / "hotpotqa" / "dev.jsonl", _records(1))
    _write_jsonl(tmp_path / "hotpotqa" / "train.jsonl", _records(1))
    _write_jsonl(tmp_path / "bamboogle" / "test.jsonl", _records(1))
    assert flashrag_path(tmp_path, "hotpotqa", "dev") == tmp_path / "hotpotqa" / "dev.jsonl"
    assert available_splits(tmp_path, "hotpotqa") == ["dev", "train"]
    with pytest.raises(FlashRAGLayoutError, match="available splits: dev, train"):
        flashrag_path(tmp_path, "hotpotqa", "test")
    with pytest.raises(FileNotFoundError, match="datasets in .*: bamboogle, hotpotqa"):
        flashrag_path(tmp_path, "strategyqa", "dev")


def test_research_data_flashrag_command(tmp_path, capsys):
    path = _write_jsonl(tmp_path / "strategyqa" / "dev.jsonl", _records(6))
    parser = argparse.ArgumentParser(prog="research")
    commands.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "sq.parquet"
    args = parser.parse_args(
        [
            "data",
            "flashrag",
            "--input",
            str(path),
            "--name",
            "strategyqa",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == f"wrote 6 of 6 strategyqa rows to {out}"
    assert {r["data_source"] for r in read_rows(out)} == {"strategyqa"}

    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "question": "q?"}])
    args = parser.parse_args(
        [
            "data",
            "flashrag",
            "--input",
            str(bad),
            "--name",
            "x",
            "--out",
            str(tmp_path / "bad.parquet"),
        ]
    )
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}, line 1: record has no 'golden_answers' field")
