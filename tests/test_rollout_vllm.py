"""The vLLM backend on a GPU (skipped without CUDA and vllm): the same contract as the
Hugging Face backend, checked against it on the same model."""

from __future__ import annotations

import pytest

from research.rollout.generation import SamplingParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def vllm_and_hf(tmp_path_factory):
    pytest.importorskip("vllm")
    from research.models.tiny import save_tiny_model, tiny_model
    from research.rollout.backends.hf import HFGenerator
    from research.rollout.backends.vllm import VLLMGenerator

    path = save_tiny_model(tmp_path_factory.mktemp("tiny"))
    model, tok = tiny_model()
    gen = VLLMGenerator.build(str(path), dtype="float32", gpu_memory_utilization=0.2,
                              enforce_eager=True)
    return gen, HFGenerator(model, tok), tok


def test_greedy_matches_the_hf_backend(vllm_and_hf):
    gen, hf, tok = vllm_and_hf
    prompts = [tok.encode("The capital of France is"), tok.encode("Once upon a time")]
    params = [SamplingParams(12, temperature=0)] * 2
    for v, h in zip(gen.generate(prompts, params), hf.generate(prompts, params), strict=True):
        assert v.token_ids == h.token_ids
        assert v.logprobs == pytest.approx(h.logprobs, abs=1e-3)


def test_stop_strings_and_budgets(vllm_and_hf):
    gen, hf, tok = vllm_and_hf
    p = tok.encode("Once upon a time")
    free = hf.generate([p], [SamplingParams(20, temperature=0)])[0]
    stop = tok.decode(free.token_ids[6:8])
    stopped, short = gen.generate([p, p], [SamplingParams(20, temperature=0, stop=(stop,)),
                                           SamplingParams(3, temperature=0)])
    assert stopped.finish_reason == "stop" and stopped.stop_string == stop
    assert short.finish_reason == "length" and len(short.token_ids) == 3
