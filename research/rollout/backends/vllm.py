"""vLLM backend for GPU machines: token ids in (``TokensPrompt``), token ids out.

The caller may hand in a ``vllm.LLM`` it owns (the training engine keeps its weights current:
TRL's colocated vLLM engine, for example) or let :meth:`VLLMGenerator.build` create one for
rollout-only or evaluation use. Facts relied on (vLLM's ``CompletionOutput``): ``token_ids``
are the sampled ids, the tokens that completed a stop string included; ``logprobs=0`` returns
the sampled token's log-prob at each step; ``finish_reason == "stop"`` with ``stop_reason``
None means the tokenizer's EOS, with an int that id of ``stop_token_ids``, with a string that
stop string; ``"length"`` means the budget.

EOS: vLLM is asked to stop on the whole EOS set (``stop_token_ids``, on top of its own EOS).
The token that stopped it stays in ``token_ids``, with its log-prob: vLLM drops a stop token
from the text only (its detokenizer skips it unless ``include_stop_str_in_output``), never
from the ids (``vllm/v1/engine/detokenizer.py``, ``vllm/v1/core/sched/utils.py``
``check_stop``). So the EOS a generation ends with is the one sampled, trained on with its
real log-prob; nothing is appended. vLLM checks the budget before EOS: an EOS sampled as the
last token of the budget says ``"length"`` there, and is ``"eos"`` here, as in the Hugging
Face backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from research.errors import MissingDependency
from research.rollout.generation import Generation, SamplingParams, check_batch, model_eos_ids


def _vllm():
    try:
        import vllm
    except ImportError:
        raise MissingDependency(
            "the vLLM backend needs vllm (CUDA machines): `pip install vllm`; on CPU use the "
            "Hugging Face backend"
        ) from None
    return vllm


def _model_folder(llm) -> str | None:
    """The model an ``LLM`` was built from (a folder or a hub name)."""
    return getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "model",
                   None)


class VLLMGenerator:
    """Generates with a ``vllm.LLM``; all prompts of a call go to vLLM as one batch.

    ``eos_token_ids``: the ids that end a sequence, by default
    :func:`~research.rollout.generation.model_eos_ids` of the engine's model folder and
    tokenizer."""

    def __init__(self, llm, eos_token_ids: Sequence[int] | None = None):
        self.llm = llm
        if eos_token_ids is None:
            eos_token_ids = model_eos_ids(_model_folder(llm), llm.get_tokenizer())
        self.eos_token_ids = frozenset(int(e) for e in eos_token_ids)

    @classmethod
    def build(cls, model: str, **llm_kwargs) -> VLLMGenerator:
        """A generator with its own engine, e.g. ``build(path, tensor_parallel_size=2,
        gpu_memory_utilization=0.6, dtype="bfloat16")``."""
        llm = _vllm().LLM(model=model, **llm_kwargs)
        return cls(llm, model_eos_ids(model, llm.get_tokenizer()))

    def _params(self, p: SamplingParams):
        return _vllm().SamplingParams(
            max_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p,
            stop=list(p.stop), include_stop_str_in_output=True, logprobs=0, seed=p.seed,
            skip_special_tokens=False, stop_token_ids=sorted(self.eos_token_ids),
        )

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
                 ) -> list[Generation]:
        if not check_batch(prompts, params):
            return []
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, [self._params(p) for p in params], use_tqdm=False)
        return [to_generation(o.outputs[0], self.eos_token_ids) for o in outputs]


def to_generation(out, eos_token_ids: frozenset[int]) -> Generation:
    """Map one vLLM ``CompletionOutput`` to a :class:`Generation`: cut after the first EOS id
    (``"eos"``), else the stop string vLLM names (``"stop"``), else its finish reason."""
    ids = list(out.token_ids)
    logprobs = [float(step[tok].logprob) for step, tok in zip(out.logprobs or [], ids,
                                                              strict=False)]
    logprobs += [0.0] * (len(ids) - len(logprobs))
    eos_at = next((i for i, t in enumerate(ids) if t in eos_token_ids), None)
    if eos_at is not None:
        return Generation(ids[: eos_at + 1], logprobs[: eos_at + 1], "eos")
    if out.finish_reason == "length":
        return Generation(ids, logprobs, "length")
    if isinstance(out.stop_reason, str):
        return Generation(ids, logprobs, "stop", out.stop_reason)
    # vLLM stopped on an EOS id outside eos_token_ids (an engine built with other ids): the
    # ids are still what it sampled
    return Generation(ids, logprobs, "eos")
