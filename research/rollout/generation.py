"""The generation interface every backend implements: token ids in, token ids out.

A backend continues a batch of token-id sequences and reports, for each, the new token ids
exactly as sampled, their log-probabilities under the sampling distribution, why it
stopped, and which stop string matched. The rollout engine never re-encodes what a model
sampled: only text that it inserts itself is encoded.

EOS: :func:`model_eos_ids` decides which ids end a response (the generation config's, the
tokenizer's and the chat template's end-of-turn token); every backend and engine stops on that
set. A generation that ends at EOS carries the EOS token as sampled, with its log-prob, so the
rollout trains on it like any other sampled token. No backend adds an EOS the model did not
sample: where a server does not return it, the generation ends without it (its
``finish_reason`` still says ``"eos"``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

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

    token_ids: list[int]  # new tokens, as sampled (the EOS too, when it ended there)
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


# What a continuously batching backend (a ``generate_continuous``: the Hugging Face and the
# OpenAI-compatible ones) asks when sequences end: it passes ``[(index, Generation)]`` of every
# sequence that ended together (at one decode step, or requests that completed together) and
# gets back, for each, None (done) or ``(token_ids, params)``: that sequence's next turn.
NextTurn = Callable[[list[tuple[int, "Generation"]]],
                    list["tuple[Sequence[int], SamplingParams] | None"]]


@runtime_checkable
class ContinuousGenerator(Generator, Protocol):
    """A backend that batches continuously across turns (the Hugging Face and the
    OpenAI-compatible ones): a sequence that ends a turn gets its next turn at once, while the
    others go on decoding. ``continuous`` False: offered but switched off (the rollout then
    goes turn by turn through ``generate``)."""

    continuous: bool

    def generate_continuous(self, prompts: Sequence[Sequence[int]],
                            params: Sequence[SamplingParams], next_turn: NextTurn) -> None:
        """Generate every prompt; whenever sequences end, ``next_turn`` answers for each
        None (done) or its next turn, which joins the running batch."""
        ...


@runtime_checkable
class KeepsTurns(Protocol):
    """A backend that keeps each sequence's KV cache from one ``generate`` call to the next
    inside ``turns()`` (the weights do not change meanwhile)."""

    def turns(self) -> contextlib.AbstractContextManager: ...


@runtime_checkable
class ReportsSteps(Protocol):
    """A backend that tells ``on_step`` (when set) how many tokens each decode step sampled
    (the progress line moves inside a long turn)."""

    on_step: Callable[[int], None] | None


def runs_continuously(generator) -> bool:
    """Whether the rollout loop drives ``generator`` continuously."""
    return isinstance(generator, ContinuousGenerator) and bool(generator.continuous)


class FirstTurns:
    """A :data:`NextTurn` that ends every sequence after its first generation and keeps it:
    ``generations[i]`` (what a plain ``generate`` returns, from a continuous decode loop)."""

    def __init__(self, n: int):
        self.generations: list[Generation | None] = [None] * n

    def __call__(self, done: list[tuple[int, Generation]]) -> list[None]:
        for i, g in done:
            self.generations[i] = g
        return [None] * len(done)


def check_batch(prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> bool:
    """Validate a ``generate`` call's arguments; False when there is nothing to generate."""
    if len(prompts) != len(params):
        raise ValueError(f"one SamplingParams per prompt is needed: {len(prompts)} prompts, "
                         f"{len(params)} params")
    return bool(prompts)


def stop_in_tail(tokenizer, ids: Sequence[int], stop: Sequence[str]) -> str | None:
    """A stop string in the text of the last few tokens of ``ids`` (a window of the longest
    stop string's length plus 2 tokens, enough for one split across tokens), or None.
    Checked after every new token, it finds a stop string at the token that completes it, in
    constant time per token: the one stop-finding rule of every backend that does not stop
    on the server's side.

    >>> class Tok:
    ...     def decode(self, ids): return "".join(chr(i) for i in ids)
    >>> stop_in_tail(Tok(), [ord(c) for c in "ab</s>"], ("</s>",))
    '</s>'
    >>> stop_in_tail(Tok(), [ord(c) for c in "ab</"], ("</s>",)) is None
    True
    """
    window = 2 + max(len(s) for s in stop)
    tail = tokenizer.decode(list(ids[-window:]))
    return next((s for s in stop if s in tail), None)


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
        for k in range(1, end + 1):
            hit = stop_in_tail(tokenizer, ids[:k], stop)
            if hit is not None and (eos_at is None or k <= eos_at):
                return Generation(ids[:k], lps[:k], "stop", hit)
    if eos_at is not None:
        return Generation(ids[:end], lps[:end], "eos")
    return Generation(ids, lps, "length")


def model_eos_ids(model, tokenizer) -> list[int]:
    """The ids that end a response of ``model``: the one EOS policy of every backend, engine
    and evaluation path. Sorted, so it can be passed on as vLLM's ``stop_token_ids``.

    The union of
    (1) the ``eos_token_id`` of the model's generation config, an int or a list: ``model`` is
        a model folder (its ``generation_config.json``, if any; for prepared models
        :func:`~research.models.prepare.set_eos_ids` writes the upstream set there) or a
        loaded model (its ``generation_config``), or None for none;
    (2) the tokenizer's ``eos_token_id``;
    (3) the chat template's end-of-turn token, when the tokenizer has a chat template: the
        first special token the template writes after an assistant message (``<|im_end|>``
        for Qwen2.5 and SmolLM2, ``<|eot_id|>`` for Llama 3). It is included whatever prompt
        template a run uses: a model that writes it has ended its turn, and generating on
        past it only invents the next turn (a base Qwen2.5 lists only ``<|endoftext|>``).
    """
    ids = {tokenizer.eos_token_id, chat_end_of_turn_id(tokenizer)}
    ids |= set(_generation_config_eos(model))
    return sorted(int(i) for i in ids if i is not None)


def _generation_config_eos(model) -> list:
    if model is None or model == "":
        return []
    if isinstance(model, str | os.PathLike):
        path = Path(model) / "generation_config.json"
        eos = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
    else:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return eos if isinstance(eos, list) else [eos]


_PROBE = "ReSearchEndOfTurnProbe"


def chat_end_of_turn_id(tokenizer) -> int | None:
    """The special token the tokenizer's chat template closes an assistant message with;
    None without a chat template, or when the template writes no special token there."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    from jinja2 import TemplateError

    messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except (TemplateError, ValueError, TypeError, KeyError) as exc:
        logger.warning("cannot render the chat template to find its end-of-turn token (%s); "
                       "the EOS set is the tokenizer's and the generation config's", exc)
        return None
    if not isinstance(text, str) or _PROBE not in text:
        return None
    special = set(getattr(tokenizer, "all_special_ids", ()))
    special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()
                if getattr(t, "special", False)}
    after = tokenizer.encode(text[text.rindex(_PROBE) + len(_PROBE):], add_special_tokens=False)
    return next((int(i) for i in after if i in special), None)
