"""The search-interleaved rollout: generation that pauses at ``</search>``, asks the retrieval
service, and continues with the result inserted.

All active sequences of a batch generate together each turn; those that stopped at
``</search>`` have their queries sent in one ``batch_search``; the result blocks are encoded
(the only text ever encoded) and appended with loss mask 0; the model's own tokens are kept
exactly as sampled with loss mask 1. Token ids, mask and log-probs are built together, so
``len(response_ids) == len(loss_mask) == len(logprobs)`` always holds.

Budgets: ``max_response_tokens`` counts every response token, inserted ones included (8192
in the original); ``max_turns`` caps the searches (the original had none); ``top_k``
documents per search; ``max_result_tokens`` optionally caps one inserted result. An empty
query gets the "invalid query" text; a search that fails after the client's retries gets a
visible failure text and is counted. The rollout never raises because the service failed.

Ends: a trajectory ends at an EOS token (the model's whole end-of-text set), when its budget
is spent, or, with ``stop_at_answer``, right after its first ``</answer>`` (as Search-R1
does; the original generated on to EOS). A search asked for beyond ``max_turns`` is answered
once with a fixed notice that no more searches are possible (``on_max_turns="answer"``, the
default: the model can still answer, as in Search-R1 and verl's loops); a second one, or any
with ``on_max_turns="end"``, ends the trajectory (``"turns"``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

from research import protocol
from research.errors import ConfigError
from research.retrieval.base import Hit
from research.retrieval.client import SearchError
from research.rollout.generation import Generation, Generator, SamplingParams

logger = logging.getLogger(__name__)

TrajectoryFinish = Literal["eos", "answer", "length", "turns"]
# The finishes that end a response properly (the reward's EOS gate passes): EOS, or the stop
# at ``</answer>`` when ``stop_at_answer`` asked for it.
COMPLETE_FINISHES = frozenset({"eos", "answer"})


class BatchSearcher(Protocol):
    """What the rollout needs of the retrieval side (``SearchClient`` is one)."""

    def batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]: ...


@dataclass(frozen=True)
class RolloutConfig:
    """Budgets and sampling of a rollout (PROTOCOL.md section 4)."""

    max_response_tokens: int = 8192  # response budget, inserted results included
    max_turns: int | None = None  # most searches per trajectory (None: no cap, as the original)
    top_k: int = 5  # documents per search
    max_result_tokens: int | None = None  # cap on one inserted result's document tokens
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    mask_results: bool = True  # False reproduces the first version (results in the loss)
    seed: int | None = None
    stop_at_answer: bool = False  # end the response at its first </answer> (Search-R1)
    on_max_turns: Literal["answer", "end"] = "answer"  # a search beyond max_turns: a notice
    # that no more searches are possible, once ("answer"), or the end of the trajectory

    def __post_init__(self):
        if self.max_response_tokens < 1:
            raise ConfigError("max_response_tokens must be >= 1")
        if self.max_turns is not None and self.max_turns < 0:
            raise ConfigError("max_turns must be >= 0 or None")
        if self.top_k < 1:
            raise ConfigError("top_k must be >= 1")
        if self.max_result_tokens is not None and self.max_result_tokens < 1:
            raise ConfigError("max_result_tokens must be >= 1 or None")
        if self.on_max_turns not in ("answer", "end"):
            raise ConfigError(f"on_max_turns must be 'answer' or 'end', got {self.on_max_turns!r}")

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop strings of every turn."""
        return (protocol.SEARCH_END, protocol.ANSWER_END) if self.stop_at_answer else (
            protocol.SEARCH_END,)


@dataclass
class Turn:
    """One search: the query, what came back, how long it took, and any failure."""

    query: str
    doc_ids: list[str]
    latency_s: float
    failure: str | None  # None, "invalid query", or "search failed: <why>" (the model sees
    # "search failed")
    inserted_tokens: int


@dataclass
class Trajectory:
    """One rollout, as the trainers consume it.

    ``response_ids[t]`` was sampled by the model when ``loss_mask[t] == 1`` (its log-prob is
    ``logprobs[t]``) and inserted by the rollout when ``loss_mask[t] == 0`` (log-prob 0.0),
    unless ``mask_results`` was off. ``text`` is the decoded response, for humans only.
    """

    index: int  # position of the prompt in the batch
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    inserted: list[bool] = field(default_factory=list)  # True on inserted result tokens
    finish_reason: TrajectoryFinish | None = None
    turns: list[Turn] = field(default_factory=list)
    text: str = ""
    turn_limit_notices: int = 0  # searches answered with the "no more searches" notice

    @property
    def num_searches(self) -> int:
        return len(self.turns)

    @property
    def num_failures(self) -> int:
        return sum(t.failure is not None and t.failure != protocol.INVALID_QUERY_TEXT
                   for t in self.turns)

    @property
    def ended_with_eos(self) -> bool:
        """Whether the response ended properly: at EOS, or at ``</answer>`` when the rollout
        stops there (what the reward's EOS gate asks; over length and the turn cap do not)."""
        return self.finish_reason in COMPLETE_FINISHES

    @property
    def inserted_tokens(self) -> int:
        return sum(self.inserted)

    def to_dict(self) -> dict:
        return asdict(self)


class RolloutState:
    """The state machine of one rollout, per trajectory: what to sample next
    (:meth:`sampling_params`), what a generation means (:meth:`record_generation`: the
    trajectory ends, or asks to search) and the result block that follows (:meth:`search`,
    :meth:`insert`). :func:`run_rollouts` drives it over a batch; the verl agent loop drives
    it one trajectory at a time against verl's servers."""

    def __init__(self, generator: Generator | None, searcher: BatchSearcher, tokenizer,
                 config: RolloutConfig):
        self.generator = generator
        self.searcher = searcher
        self.tokenizer = tokenizer
        self.config = config
        self._pieces = {}  # cached encodings of the fixed parts of result blocks

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def budget_left(self, t: Trajectory) -> int:
        return self.config.max_response_tokens - len(t.response_ids)

    def add(self, t: Trajectory, ids: list[int], logprobs: list[float], inserted: bool) -> None:
        t.response_ids += ids
        t.logprobs += logprobs
        t.inserted += [inserted] * len(ids)
        t.loss_mask += [0 if inserted and self.config.mask_results else 1] * len(ids)

    def sampling_params(self, t: Trajectory) -> SamplingParams:
        """The next turn of ``t``: the budget left, stopping at ``</search>`` (and at
        ``</answer>`` with ``stop_at_answer``)."""
        c = self.config
        return SamplingParams(max_new_tokens=self.budget_left(t), temperature=c.temperature,
                              top_p=c.top_p, stop=c.stops, seed=c.seed)

    def record_generation(self, t: Trajectory, g: Generation) -> str | None:
        """Append the model's tokens; returns the query when ``t`` asked to search (``""``
        for an empty one), else None: ``t.finish_reason`` is set, or (a search beyond
        ``max_turns``) the turn-limit notice was inserted and ``t`` goes on generating."""
        self.add(t, g.token_ids, g.logprobs, inserted=False)
        reason = self._after_generation(t, g)
        if reason == "turns" and self._notify_turn_limit(t):
            return None
        if reason is not None:
            t.finish_reason = reason
            return None
        return protocol.extract_query(self.tokenizer.decode(g.token_ids)) or ""

    def _notify_turn_limit(self, t: Trajectory) -> bool:
        """Insert the "no more searches" notice once per trajectory (``on_max_turns``
        "answer", a cap of at least one search); False when the trajectory ends instead."""
        c = self.config
        if c.on_max_turns != "answer" or not c.max_turns or t.turn_limit_notices:
            return False
        self._insert_ids(t, self._pieces.setdefault("limit", self._encode(
            protocol.format_result_text(protocol.TURN_LIMIT_TEXT))))
        t.turn_limit_notices += 1
        return True

    def turn(self, active: list[Trajectory]) -> list[tuple[Trajectory, str]]:
        """Generate one turn for every active trajectory; returns those that asked to search."""
        params = [self.sampling_params(t) for t in active]
        outputs = self.generator.generate([t.prompt_ids + t.response_ids for t in active], params)
        searching = []
        for t, g in zip(active, outputs, strict=True):
            query = self.record_generation(t, g)
            if query is not None:
                searching.append((t, query))
        return searching

    def _after_generation(self, t: Trajectory, g: Generation) -> TrajectoryFinish | None:
        if g.finish_reason == "eos":
            return "eos"
        if g.finish_reason == "stop" and g.stop_string == protocol.ANSWER_END:
            return "answer"
        if g.finish_reason != "stop" or self.budget_left(t) <= 0:
            return "length"
        if self.config.max_turns is not None and len(t.turns) >= self.config.max_turns:
            return "turns"
        return None

    def search(self, searching: list[tuple[Trajectory, str]]) -> None:
        """One batch request for every real query; then insert each result block."""
        queries = sorted({q for _, q in searching if q.strip()})
        results: dict[str, list[Hit]] = {}
        failure = None
        start = time.perf_counter()
        if queries:
            try:
                results = dict(zip(queries, self.searcher.batch_search(queries, self.config.top_k),
                                   strict=True))
            except SearchError as e:
                failure = f"{protocol.SEARCH_FAILURE_TEXT}: {e}"
                logger.warning("search failed for %d queries: %s", len(queries), e)
        latency = time.perf_counter() - start
        for t, query in searching:
            if not query.strip():
                self.insert(t, query, [], protocol.INVALID_QUERY_TEXT, 0.0)
            elif failure is not None:
                self.insert(t, query, [], failure, latency)
            else:
                self.insert(t, query, results[query], None, latency)

    def _result_ids(self, hits: list[Hit], failure: str | None) -> list[int]:
        head = self._pieces.setdefault("head", self._encode(f" {protocol.RESULT_START}\n"))
        tail = self._pieces.setdefault("tail", self._encode(f"\n{protocol.RESULT_END}"))
        if failure is None:
            body_text = protocol.join_documents([h.contents for h in hits])
        elif failure == protocol.INVALID_QUERY_TEXT:
            body_text = failure
        else:  # the model sees a short, stable text; the turn keeps the details
            body_text = protocol.SEARCH_FAILURE_TEXT
        body = self._encode(body_text)
        if self.config.max_result_tokens is not None:
            body = body[: self.config.max_result_tokens]
        return head + body + tail

    def _insert_ids(self, t: Trajectory, ids: list[int]) -> int:
        """Append inserted ids (loss mask 0, log-prob 0.0) up to the budget; returns how
        many fit, and ends ``t`` ("length") when they filled it."""
        left = self.budget_left(t)
        kept = ids[:left]
        self.add(t, kept, [0.0] * len(kept), inserted=True)
        if len(ids) >= left:
            t.finish_reason = "length"  # the inserted text filled the budget
        return len(kept)

    def insert(self, t: Trajectory, query: str, hits: list[Hit], failure: str | None,
               latency: float) -> None:
        inserted = self._insert_ids(t, self._result_ids(hits, failure))
        t.turns.append(Turn(query, [h.id for h in hits], round(latency, 4), failure, inserted))


def run_rollouts(
    prompts: Sequence[Sequence[int]],
    generator: Generator,
    searcher: BatchSearcher,
    tokenizer,
    config: RolloutConfig | None = None,
) -> list[Trajectory]:
    """Roll out every prompt (token ids) to the end; one :class:`Trajectory` each, in order."""
    config = config or RolloutConfig()
    run = RolloutState(generator, searcher, tokenizer, config)
    trajectories = [Trajectory(index=i, prompt_ids=list(p)) for i, p in enumerate(prompts)]
    while active := [t for t in trajectories if t.finish_reason is None]:
        searching = run.turn(active)
        if searching:
            run.search(searching)
    for t in trajectories:
        t.text = tokenizer.decode(t.response_ids)
    return trajectories
