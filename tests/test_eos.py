"""The one EOS policy (``model_eos_ids``) with the real SmolLM2 tokenizer, and the EOS a
generation ends with on the Hugging Face and vLLM backends: sampled, kept with its real
log-prob, trained on (loss mask 1), never appended. The HTTP backend's: test_rollout_openai.py."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace as NS

import pytest
import torch
from conftest import missing

from research.rollout.backends.hf import HFGenerator
from research.rollout.engine import run_rollouts
from research.rollout.generation import SamplingParams, chat_end_of_turn_id, model_eos_ids
from research.rollout.settings import RolloutSettings


@pytest.fixture
def tok():
    """A fresh SmolLM2 tokenizer (the tests change it): EOS and end-of-turn <|im_end|> (2),
    <|endoftext|> is 0."""
    from research.models.tiny import load_tokenizer

    return load_tokenizer()


def ids(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def test_the_chat_templates_end_of_turn_token(tok):
    (im_end,) = ids(tok, "<|im_end|>")
    assert chat_end_of_turn_id(tok) == im_end
    tok.eos_token = "<|endoftext|>"  # a base model's tokenizer: EOS is not the end of turn
    assert model_eos_ids(None, tok) == sorted(ids(tok, "<|endoftext|>", "<|im_end|>"))
    tok.chat_template = None
    assert chat_end_of_turn_id(tok) is None
    assert model_eos_ids(None, tok) == ids(tok, "<|endoftext|>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    assert chat_end_of_turn_id(tok) is None  # no special token after the message


def test_a_template_that_cannot_render_is_skipped_with_a_warning(tok, caplog):
    tok.eos_token = "<|endoftext|>"
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with caplog.at_level(logging.WARNING, logger="research.rollout.generation"):
        assert model_eos_ids(None, tok) == ids(tok, "<|endoftext|>")
    assert "roles must alternate" in caplog.text


@pytest.mark.parametrize(("eos", "expected"), [([0, 7], [0, 2, 7]), (7, [2, 7])])
def test_the_generation_config_of_a_folder(tok, tmp_path, eos, expected):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    assert model_eos_ids(tmp_path, tok) == expected
    assert model_eos_ids(str(tmp_path / "missing"), tok) == [2]  # no config: the tokenizer's


def test_the_generation_config_of_a_loaded_model(tiny):
    model, tok = tiny
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, 7]
    try:
        assert model_eos_ids(model, tok) == sorted({tok.eos_token_id, 7})
        assert HFGenerator(model, tok).eos_token_ids == {tok.eos_token_id, 7}
    finally:
        model.generation_config.eos_token_id = old


def test_prepared_qwen_ends_at_both_end_of_text_ids():
    from research.models.prepare import REGISTRY, is_prepared, model_dir

    if not is_prepared(REGISTRY["qwen2.5-0.5b"]):
        missing("qwen2.5-0.5b is not prepared here (research model prepare qwen2.5-0.5b)")
    from transformers import AutoTokenizer

    path = model_dir("qwen2.5-0.5b")
    assert model_eos_ids(path, AutoTokenizer.from_pretrained(path)) == [151643, 151645]


class NoSearch:
    def batch_search(self, queries, k):
        raise AssertionError("no search expected")


def greedy_eos(model, tok, prompt):
    """A token greedy decoding reaches (made an EOS below) and the greedy run before it."""
    free = HFGenerator(model, tok).generate([prompt], [SamplingParams(12, temperature=0)])[0]
    eos = free.token_ids[4]
    cut = free.token_ids.index(eos) + 1
    return eos, free.token_ids[:cut]


def test_hf_backend_ends_with_the_sampled_eos_and_its_log_prob(tiny):
    model, tok = tiny
    prompt = tok.encode("Once upon a time", add_special_tokens=False)
    eos, expected = greedy_eos(model, tok, prompt)
    gen = HFGenerator(model, tok, eos_token_ids=[eos])
    (t,) = run_rollouts([prompt], gen, NoSearch(), tok,
                        RolloutSettings(max_response_tokens=12, temperature=0))
    assert t.finish_reason == "eos" and t.response_ids == expected
    with torch.no_grad():
        logits = model(torch.tensor([prompt + expected])).logits[0, -2].float()
    sampled = torch.log_softmax(logits, -1)[eos].item()
    assert t.loss_mask[-1] == 1 and t.logprobs[-1] == pytest.approx(sampled, abs=2e-4)
    assert sampled < -1e-3  # a real log-prob, not the 0.0 of an appended token


class FakeLLM:
    """A ``vllm.LLM`` answering scripted ``CompletionOutput``-shaped objects."""

    def __init__(self, outputs, tokenizer=None, model=None):
        self.outputs, self.params, self.tokenizer = list(outputs), [], tokenizer
        self.llm_engine = NS(model_config=NS(model=model))

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, requests, params, use_tqdm):
        self.params += params
        return [NS(outputs=[self.outputs.pop(0)]) for _ in requests]


def vllm_out(ids, finish, stop_reason, logprob=-0.5):
    return NS(token_ids=ids, finish_reason=finish, stop_reason=stop_reason,
              logprobs=[{t: NS(logprob=logprob - i)} for i, t in enumerate(ids)])


@pytest.fixture
def fake_vllm(monkeypatch):
    import research.rollout.backends.vllm as backend

    monkeypatch.setattr(backend, "_vllm", lambda: NS(SamplingParams=dict))
    return backend.VLLMGenerator


def test_vllm_backend_keeps_the_sampled_eos_and_asks_for_the_whole_set(tiny, fake_vllm):
    _, tok = tiny
    eos = tok.eos_token_id
    llm = FakeLLM([vllm_out([5, 6, eos], "stop", None)])
    (t,) = run_rollouts([[1, 2]], fake_vllm(llm, eos_token_ids=[eos, 7]), NoSearch(), tok,
                        RolloutSettings(max_response_tokens=8, temperature=0))
    assert t.finish_reason == "eos" and t.response_ids == [5, 6, eos]
    assert t.logprobs == [-0.5, -1.5, -2.5] and t.loss_mask == [1, 1, 1]
    (params,) = llm.params
    assert params["stop_token_ids"] == sorted({eos, 7}) and params["logprobs"] == 0
    assert params["skip_special_tokens"] is False


def test_vllm_output_conversion_never_appends(fake_vllm):
    from research.rollout.backends.vllm import to_generation

    eos = frozenset({2, 7})
    g = to_generation(vllm_out([5, 7], "stop", 7), eos)  # a stop_token_ids hit
    assert (g.finish_reason, g.token_ids, g.logprobs) == ("eos", [5, 7], [-0.5, -1.5])
    g = to_generation(vllm_out([5, 6, 2], "length", None), eos)  # EOS as the budget's last
    assert g.finish_reason == "eos" and g.token_ids == [5, 6, 2]
    g = to_generation(vllm_out([5, 9], "stop", None), eos)  # stopped on an id not in the set
    assert g.finish_reason == "eos" and g.token_ids == [5, 9] and g.logprobs == [-0.5, -1.5]


def test_vllm_backend_reads_the_engines_model_folder(tok, tmp_path, fake_vllm):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    gen = fake_vllm(FakeLLM([], tokenizer=tok, model=str(tmp_path)))
    assert gen.eos_token_ids == {0, 2}
