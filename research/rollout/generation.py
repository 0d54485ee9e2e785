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
