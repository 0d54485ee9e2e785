"""HotpotQA conversion: rows, dev sampling, streaming reader, errors, the entry point."""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from research.data import commands
from research.data.hotpotqa import (
    HotpotQAFormatError,
    convert_hotpotqa,
    iter_json_array,
    load_hotpotqa_rows,
)
from research.data.rows import read_rows

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "training" / "data_preprocess_hpqa.py"


def _record(i: int, split: str) -> dict:
    """A record in HotpotQA's released form (with context the rows do not keep)."""
    return {
        "_id": f"{split}{i:05x}ab",
        "question": f"Which city hosts landmark number {i}, café \u00e9dition?",
        "answer": "yes" if i % 7 == 0 else f"City {i}",
        "supporting_facts": [[f"Landmark {i}", 0], [f"City {i}", 1]],
        "context": [[f"Landmark {i}", [f"Landmark {i} is in City {i}.", " It is old."]]],
        "type": "comparison" if i % 7 == 0 else "bridge",
        "level": "medium",
    }


def _write_json(path: Path, value, indent=None) -> Path:
    path.write_text(json.dumps(value, indent=indent, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def hotpot_files(tmp_path):
    """Fake train (300 records, one line as released) and dev (250, indented) files."""
    train = _write_json(tmp_path / "hotpot_train_v1.1.json", [_record(i, "t") for i in range(300)])
    dev = [_record(i, "d") for i in range(250)]
    return train, _write_json(tmp_path / "hotpot_dev_fullwiki_v1.json", dev, indent=1)


def _expected_dev_ids(dev_path: Path, size: int | None, seed: int = 42) -> list[str]:
    """The original's procedure: seed, shuffle the loaded record list, slice."""
    records = json.loads(dev_path.read_text(encoding="utf-8"))
    random.Random(seed).shuffle(records)
    return [r["_id"] for r in (records if size is None else records[:size])]


def test_train_rows_are_the_original_rows_in_file_order(hotpot_files, tmp_path):
    train, dev = hotpot_files
    summary = convert_hotpotqa(train, dev, tmp_path / "out", progress=False)
    rows = read_rows(tmp_path / "out" / "train.parquet")
    assert summary.train_rows == len(rows) == 300
    assert rows[5] == {
        "data_source": "hotpotqa",
        "question": _record(5, "t")["question"],
        "ability": "qa",
        "reward_model": {"style": "rule", "ground_truth": "City 5"},
        "extra_info": {"id": "t00005ab", "index": 5},
    }
    assert [r["extra_info"]["id"] for r in rows] == [_record(i, "t")["_id"] for i in range(300)]
    assert all(isinstance(r["reward_model"]["ground_truth"], str) for r in rows)


def test_dev_is_the_first_100_after_the_seed_42_shuffle(hotpot_files, tmp_path):
    train, dev = hotpot_files
    summary = convert_hotpotqa(train, dev, tmp_path / "out", progress=False)
    rows = read_rows(tmp_path / "out" / "dev.parquet")
    assert (summary.dev_rows, summary.dev_total) == (100, 250)
    assert [r["extra_info"]["id"] for r in rows] == _expected_dev_ids(dev, 100)
    by_id = {r["_id"]: (i, r) for i, r in enumerate(json.loads(dev.read_text("utf-8")))}
    for row in rows:
        index, record = by_id[row["extra_info"]["id"]]
        assert row["extra_info"]["index"] == index
        assert row["question"] == record["question"]
        assert row["reward_model"]["ground_truth"] == record["answer"]


def test_dev_sampling_is_deterministic_and_follows_seed_and_size(hotpot_files, tmp_path):
    train, dev = hotpot_files
    convert_hotpotqa(train, dev, tmp_path / "a", dev_size=10, seed=7, progress=False)
    convert_hotpotqa(train, dev, tmp_path / "b", dev_size=10, seed=7, progress=False)
    first = read_rows(tmp_path / "a" / "dev.parquet")
    assert first == read_rows(tmp_path / "b" / "dev.parquet")
    assert [r["extra_info"]["id"] for r in first] == _expected_dev_ids(dev, 10, seed=7)


def test_full_dev_keeps_every_record_in_the_shuffled_order(hotpot_files, tmp_path):
    train, dev = hotpot_files
    convert_hotpotqa(train, dev, tmp_path / "full", full_dev=True, progress=False)
    convert_hotpotqa(train, dev, tmp_path / "default", progress=False)
    full = read_rows(tmp_path / "full" / "dev.parquet")
    assert [r["extra_info"]["id"] for r in full] == _expected_dev_ids(dev, None)
    assert full[:100] == read_rows(tmp_path / "default" / "dev.parquet")


@pytest.mark.parametrize("indent", [None, 2])
def test_streaming_reader_matches_json_load(tmp_path, indent):
    value = [
        1,
        2.5,
        -3e4,
        2.5e-3,
        1e100,
        -0.0,
        "x\u00e9\u4e2d\U0001f600",
        {"a": [1, {"b": None}]},
        None,
        True,
        False,
        12345678901234567890,
        [],
        {},
        "",
        '\\"quoted\\"',
        [10, 200, 3000],
    ]
    path = _write_json(tmp_path / "v.json", value, indent=indent)
    for chunk_chars in [*range(1, 14), 64, 1 << 20]:
        decoded = [v for _, v in iter_json_array(path, progress=False, chunk_chars=chunk_chars)]
        assert decoded == value, chunk_chars
    assert list(iter_json_array(_write_json(tmp_path / "e.json", []), progress=False)) == []


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"data": []}', r"record 0 \(line 1\): the top level is not a JSON list"),
        ("", "the top level is not a JSON list"),
        ('[{"a": 1}, {"a": 2} {"a": 3}]', r"record 1 \(line 1\): expected ','"),
        ('[{"a": 1},\n {"a": 2},\n {"a": ', r"record 2 \(line 3\): malformed JSON"),
        ('[{"a": 1},\n {"a": tru}]', r"record 1 \(line 2\): malformed JSON"),
        ("[1, 2]\n]", r"line 2: unexpected text after"),
    ],
)
def test_streaming_reader_names_file_record_and_line(tmp_path, text, pattern):
    path = tmp_path / "broken.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(HotpotQAFormatError, match=pattern) as info:
        list(iter_json_array(path, progress=False, chunk_chars=4))
    assert str(path) in str(info.value)


def test_non_utf8_file_is_a_format_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"question": "caf\xe9"}]')
    with pytest.raises(HotpotQAFormatError, match="not UTF-8"):
        list(iter_json_array(path, progress=False))


@pytest.mark.parametrize(
    ("record", "pattern"),
    [
        ({"_id": "a", "question": "q?"}, "no 'answer' field. Fix: the HotpotQA test files"),
        ({"_id": "a", "answer": "x"}, "no 'question' field"),
        ({"question": "q?", "answer": "x"}, "no '_id' field"),
        ({"_id": "a", "question": 3, "answer": "x"}, "'question' must be a non-empty string"),
        ({"_id": "a", "question": "q?", "answer": ["x"]}, "'answer' must be"),
        ("not a record", "expected a JSON object, got str"),
    ],
)
def test_malformed_records_name_file_and_index(tmp_path, record, pattern):
    good = [_record(i, "t") for i in range(3)]
    path = _write_json(tmp_path / "train.json", [*good, record])
    with pytest.raises(HotpotQAFormatError, match=pattern) as info:
        list(load_hotpotqa_rows(path, progress=False))
    assert f"{path}, record 3" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_malformed_train_writes_nothing(hotpot_files, tmp_path):
    _, dev = hotpot_files
    train = _write_json(tmp_path / "bad_train.json", [_record(0, "t"), {"_id": "x"}])
    with pytest.raises(HotpotQAFormatError, match="record 1"):
        convert_hotpotqa(train, dev, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_empty_file_is_named(hotpot_files, tmp_path):
    train, _ = hotpot_files
    dev = _write_json(tmp_path / "empty_dev.json", [])
    with pytest.raises(HotpotQAFormatError, match="empty_dev.json: the list holds no records"):
        convert_hotpotqa(train, dev, tmp_path / "out", progress=False)


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_entry_point_converts_and_prints_one_line(hotpot_files, tmp_path):
    train, dev = hotpot_files
    out = tmp_path / "out"
    done = _run_script(
        "--train", str(train), "--dev", str(dev), "--out", str(out), "--dev-size", "20"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().count("\n") == 0
    assert "300 train rows" in done.stdout and "20 of 250 dev rows" in done.stdout
    assert len(read_rows(out / "dev.parquet")) == 20


def test_entry_point_accepts_the_original_option_names(hotpot_files, tmp_path):
    train, dev = hotpot_files
    out = tmp_path / "out"
    done = _run_script(
        "--train_data_path",
        str(train),
        "--dev_data_path",
        str(dev),
        "--output_dir",
        str(out),
        "--full-dev",
    )
    assert done.returncode == 0, done.stderr
    assert len(read_rows(out / "dev.parquet")) == 250


@pytest.mark.parametrize("problem", ["malformed", "missing"])
def test_entry_point_bad_input_exits_2_without_traceback(hotpot_files, tmp_path, problem):
    train, dev = hotpot_files
    if problem == "malformed":
        dev = _write_json(tmp_path / "bad_dev.json", [_record(0, "d"), {"_id": "x"}])
    else:
        dev = tmp_path / "nowhere.json"
    done = _run_script("--train", str(train), "--dev", str(dev), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert str(dev) in done.stderr
    assert not (tmp_path / "o").exists()


def test_research_data_hotpotqa_command(hotpot_files, tmp_path, capsys):
    train, dev = hotpot_files
    parser = argparse.ArgumentParser(prog="research")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "data",
            "hotpotqa",
            "--train",
            str(train),
            "--dev",
            str(dev),
            "--out",
            str(tmp_path / "out"),
            "--seed",
            "3",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    assert "seed 3" in capsys.readouterr().out
    rows = read_rows(tmp_path / "out" / "dev.parquet")
    assert [r["extra_info"]["id"] for r in rows] == _expected_dev_ids(dev, 100, seed=3)


def test_bad_dev_size_is_an_argument_error(capsys):
    parser = argparse.ArgumentParser(prog="research")
    commands.register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as info:
        parser.parse_args(
            ["data", "hotpotqa", "--train", "a", "--dev", "b", "--out", "c", "--dev-size", "0"]
        )
    assert info.value.code == 2
    assert "must be an integer >= 1" in capsys.readouterr().err


def test_entry_point_runs_without_the_package_installed(hotpot_files, tmp_path):
    """Hide the installed (editable) package: the script must find ``research`` by itself."""
    train, dev = hotpot_files
    out = tmp_path / "out"
    code = (
        "import runpy, sys\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        f"sys.argv = {['x', '--train', str(train), '--dev', str(dev), '--out', str(out)]!r}\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (out / "train.parquet").is_file()
