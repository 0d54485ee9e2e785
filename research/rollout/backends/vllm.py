"""vLLM backend for GPU machines: token ids in (``TokensPrompt``), token ids out.

The caller may hand in a ``vllm.LLM`` it owns (the training engine keeps its weights current:
TRL's colocated vLLM engine, for example) or let :meth:`VLLMGenerator.build` create one for
rollout-only or evaluation use. Facts relied on (vLLM's ``CompletionOutput``): ``token_ids``
are the sampled ids, the tokens that completed a stop string included; ``logprobs=0`` returns
the sampled token's log-prob at each step; ``finish_reason == "stop"`` with ``stop_reason``
None means EOS, with a string means that stop string; ``"length"`` means the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from research.errors import MissingDependency
from research.rollout.generation import Generation, SamplingParams, check_batch


def _vllm():
    try:
        import vllm
    except ImportError:
        raise MissingDependency(
            "the vLLM backend needs vllm (CUDA machines): `pip install vllm`; on CPU use the "
            "Hugging Face backend"
        ) from None
    return vllm


class VLLMGenerator:
    """Generates with a ``vllm.LLM``; all prompts of a call go to vLLM as one batch."""

    def __init__(self, llm, eos_token_ids: Sequence[int] | None = None):
        self.llm = llm
        if eos_token_ids is None:
            tokenizer = llm.get_tokenizer()
            eos_token_ids = [tokenizer.eos_token_id]
        self.eos_token_ids = frozenset(int(e) for e in eos_token_ids)

    @classmethod
    def build(cls, model: str, **llm_kwargs) -> VLLMGenerator:
        """A generator with its own engine, e.g. ``build(path, tensor_parallel_size=2,
        gpu_memory_utilization=0.6, dtype="bfloat16")``."""
        return cls(_vllm().LLM(model=model, **llm_kwargs))

    @staticmethod
    def _params(p: SamplingParams):
        return _vllm().SamplingParams(
            max_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p,
            stop=list(p.stop), include_stop_str_in_output=True, logprobs=0, seed=p.seed,
            skip_special_tokens=False,
        )

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
                 ) -> list[Generation]:
        if not check_batch(prompts, params):
            return []
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, [self._params(p) for p in params], use_tqdm=False)
        return [to_generation(o.outputs[0], self.eos_token_ids) for o in outputs]


def to_generation(out, eos_token_ids: frozenset[int]) -> Generation:
    """Map one vLLM ``CompletionOutput`` to a :class:`Generation`."""
    ids = list(out.token_ids)
    logprobs = [float(step[tok].logprob) for step, tok in zip(out.logprobs or [], ids,
                                                              strict=False)]
    logprobs += [0.0] * (len(ids) - len(logprobs))
    if out.finish_reason == "length":
        return Generation(ids, logprobs, "length")
    if isinstance(out.stop_reason, str):
        return Generation(ids, logprobs, "stop", out.stop_reason)
    if ids and ids[-1] not in eos_token_ids and out.stop_reason is None:
        ids.append(min(eos_token_ids))  # vLLM may leave EOS out of token_ids
        logprobs.append(0.0)
    return Generation(ids, logprobs, "eos")
