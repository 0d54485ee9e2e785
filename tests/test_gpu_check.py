"""The GPU check (benchmarks/gpu_check.py) at its toy size on CPU: a random Qwen2-shaped model
with a real tokenizer, the project's rollout loop and one policy-gradient step (full and
LoRA), every figure recorded; and the tokenizer copied for the trip to the GPU machine."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark


@pytest.mark.parametrize("lora", [False, True])
def test_toy_rollout_and_step_are_recorded(tiny_path, tmp_path, lora):
    check = load_benchmark("gpu_check")
    out = tmp_path / "gpu_check.json"
    assert check.main(["--toy", "--tokenizer", str(tiny_path), "--out", str(out),
                       *(["--lora"] if lora else [])]) == 0
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and set(r["shapes"]) == {"toy"}
    toy = r["shapes"]["toy"]
    assert toy["rollout"]["trajectories"] == 4 and toy["rollout"]["sampled_tokens"] > 0
    assert toy["rollout"]["sampled_tok_per_s"] > 0
    step = toy["step"]
    assert step["lora"] is lora and step["tokens"] > 0
    assert (step["trainable_parameters"] < toy["parameters"]) is lora
    assert step["step_s"] >= step["forward_s"] > 0 and step["backward_s"] > 0


def test_the_tokenizer_is_copied_for_the_trip(tiny_path, tmp_path):
    check = load_benchmark("gpu_check")
    assert check.main(["--tokenizer", str(tiny_path), "--save-tokenizer",
                       str(tmp_path / "tok")]) == 0
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    with pytest.raises(SystemExit):
        check.main(["--tokenizer", str(tmp_path / "nowhere"), "--toy"])


def test_a_json_stand_in_takes_orjsons_place_where_it_is_missing(monkeypatch):
    import sys

    check = load_benchmark("gpu_check")
    monkeypatch.setitem(sys.modules, "orjson", None)  # as if not installed
    check.json_stand_in()
    stand_in = sys.modules["orjson"]
    assert stand_in.dumps({"a": [1]}) == b'{"a": [1]}' and stand_in.loads(b"[2]") == [2]
    assert stand_in.JSONDecodeError is json.JSONDecodeError
