"""The generation interface every backend implements: token ids in, token ids out.

A backend continues a batch of token-id sequences and reports, for each, the new token ids
exactly as sampled, their log-probabilities under the sampling distribution, why it
stopped, and which stop string matched. The rollout engine never re-encodes what a model
sampled: only text that it inserts itself is encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["eos", "stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn. ``temperature == 0`` means greedy."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generation:
    """One continued sequence."""

    token_ids: list[int]  # new tokens, as sampled (EOS included when it ended there)
    logprobs: list[float]  # one per new token, under the sampling distribution
    finish_reason: FinishReason  # eos: end-of-sequence; stop: a stop string; length: budget
    stop_string: str | None = None  # the stop string that matched (finish_reason "stop")
    extra: dict = field(default_factory=dict)  # backend-specific facts (e.g. top log-probs)

    def __post_init__(self):
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"{len(self.token_ids)} token ids but {len(self.logprobs)} log-probs")


@runtime_checkable
class Generator(Protocol):
    """Continues token-id sequences. One call generates all of them together."""

    eos_token_ids: frozenset[int]

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
                 ) -> list[Generation]:
        """Continue each ``prompts[i]`` with ``params[i]`` (budgets may differ per sequence)."""
        ...


def check_batch(prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> bool:
    """Validate a ``generate`` call's arguments; False when there is nothing to generate."""
    if len(prompts) != len(params):
        raise ValueError(f"one SamplingParams per prompt is needed: {len(prompts)} prompts, "
                         f"{len(params)} params")
    return bool(prompts)


def generation_from_tokens(tokenizer, token_ids: Sequence[int], logprobs: Sequence[float] | None,
                           eos_token_ids: frozenset[int], stop: Sequence[str] = (),
                           max_new_tokens: int | None = None) -> Generation:
    """A :class:`Generation` from a server that returns token ids but not why it stopped
    (verl's agent-loop servers): cut after the first EOS (``"eos"``), else after the first
    token whose text completes a stop string (``"stop"``), else ``"length"``. Missing
    log-probs are 0.0.

    >>> class Tok:
    ...     def decode(self, ids): return "".join(chr(i) for i in ids)
    >>> g = generation_from_tokens(Tok(), [ord(c) for c in "ab</s>cd"], None, frozenset(),
    ...                            stop=("</s>",))
    >>> "".join(map(chr, g.token_ids)), g.finish_reason, g.stop_string
    ('ab</s>', 'stop', '</s>')
    """
    ids = [int(t) for t in token_ids]
    lps = [float(x) for x in logprobs] if logprobs is not None else [0.0] * len(ids)
    if len(lps) != len(ids):
        raise ValueError(f"{len(ids)} token ids but {len(lps)} log-probs")
    eos_at = next((i for i, t in enumerate(ids) if t in eos_token_ids), None)
    end = len(ids) if eos_at is None else eos_at + 1
    if stop and any(s in tokenizer.decode(ids[:end]) for s in stop):  # then find the token
        window = 2 + max(len(s) for s in stop)
        for k in range(1, end + 1):
            tail = tokenizer.decode(ids[max(0, k - window) : k])
            hit = next((s for s in stop if s in tail), None)
            if hit is not None and (eos_at is None or k <= eos_at):
                return Generation(ids[:k], lps[:k], "stop", hit)
    if eos_at is not None:
        return Generation(ids[:end], lps[:end], "eos")
    return Generation(ids, lps, "length")


def model_eos_ids(model_dir, tokenizer) -> list[int]:
    """The tokenizer's EOS and the model's ``generation_config.json`` ones (chat models end
    turns with another token; vLLM stops on both)."""
    import json
    from pathlib import Path

    ids = {tokenizer.eos_token_id}
    config = Path(model_dir) / "generation_config.json"
    if config.is_file():
        eos = json.loads(config.read_text()).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos])
    return sorted(int(i) for i in ids if i is not None)
