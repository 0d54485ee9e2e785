"""The search-interleaved rollout: generation that pauses at ``</search>``, asks the retrieval
service, and continues with the result inserted.

Three parts. :class:`RolloutState` is the state machine of the protocol and nothing else: it
says what a trajectory generates next (:meth:`~RolloutState.request`), absorbs what came back
(:meth:`~RolloutState.absorb`: the trajectory ends, or asks to search) and inserts the result
block (:meth:`~RolloutState.insert`); it never calls a model or the service.
:func:`search_queries` is the search policy every caller shares (the baselines' too): one
request for the distinct real queries, the fixed texts for blank and failed ones.
:func:`run_rollouts` drives both over a batch (all active sequences generate together each
turn, one ``batch_search`` per turn); the verl agent loop drives them one trajectory at a time
against verl's servers. Settings come whole from
:class:`research.rollout.settings.RolloutSettings`.

Result blocks are encoded (the only text ever encoded) and appended with loss mask 0; the
model's own tokens are kept exactly as sampled with loss mask 1. Token ids, mask and
log-probs are built together, so ``len(response_ids) == len(loss_mask) == len(logprobs)``
always holds.

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

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, NamedTuple, Protocol

from research import protocol
from research.retrieval.base import Hit
from research.retrieval.client import SearchError, SearchRequestError
from research.rollout.generation import (
    Generation,
    Generator,
    KeepsTurns,
    ReportsSteps,
    SamplingParams,
    runs_continuously,
)
from research.rollout.settings import RolloutSettings

logger = logging.getLogger(__name__)

# "aborted": the serving engine cut the generation (verl's stop_reason "aborted")
TrajectoryFinish = Literal["eos", "answer", "length", "turns", "aborted"]
# The finishes that end a response properly (the reward's EOS gate passes): EOS, or the stop
# at ``</answer>`` when ``stop_at_answer`` asked for it.
COMPLETE_FINISHES = frozenset({"eos", "answer"})


class BatchSearcher(Protocol):
    """What the rollout needs of the retrieval side (``SearchClient`` is one)."""

    def batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]: ...


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
    def search_failures(self) -> int:
        return sum(t.failure is not None and t.failure != protocol.INVALID_QUERY_TEXT
                   for t in self.turns)

    @property
    def complete(self) -> bool:
        """Whether the response ended properly: at EOS, or at ``</answer>`` when the rollout
        stops there (what the reward's EOS gate asks; over length and the turn cap do not)."""
        return self.finish_reason in COMPLETE_FINISHES

    @property
    def inserted_tokens(self) -> int:
        return sum(self.inserted)

    def summary(self) -> dict:
        """What every consumer records of a trajectory, under one set of names: TRL's extra
        fields, verl's, the evaluation records, validation and rollout dumps."""
        return {"searches": self.num_searches, "search_failures": self.search_failures,
                "complete": self.complete, "finish_reason": self.finish_reason,
                "queries": [turn.query for turn in self.turns]}

    def to_dict(self) -> dict:
        return asdict(self)


class Request(NamedTuple):
    """What a trajectory generates next: the whole sequence so far and how to sample."""

    token_ids: list[int]  # prompt + every response token so far, inserted ones included
    params: SamplingParams


@dataclass(frozen=True)
class SearchOutcome:
    """What one query got: documents, or the failure the model is shown."""

    hits: list[Hit]
    failure: str | None  # None, "invalid query", or "search failed: <why>"
    latency_s: float


def search_queries(searcher: BatchSearcher, queries: Sequence[str], k: int
                   ) -> dict[str, SearchOutcome]:
    """The search policy of every ReSearch and baseline turn: blank queries are not sent
    (``"invalid query"``); the distinct real ones go in one ``batch_search``; a request that
    fails after the client's retries gives each of them ``"search failed: <why>"``. When the
    service rejects the batch (a 4xx, e.g. one query over its length limit), each query is
    sent alone, so only the rejected ones fail. Never raises for a service failure.
    """
    outcomes = {q: SearchOutcome([], protocol.INVALID_QUERY_TEXT, 0.0)
                for q in queries if not q.strip()}
    real = sorted({q for q in queries if q.strip()})
    if not real:
        return outcomes
    start = time.perf_counter()
    try:
        found = searcher.batch_search(real, k)
    except SearchRequestError as e:
        if len(real) == 1:
            return {**outcomes, **_failed(real, e, time.perf_counter() - start)}
        logger.warning("the service rejected a batch of %d queries (%s); sending each alone",
                       len(real), e)
        for q in real:
            outcomes.update(search_queries(searcher, [q], k))
        return outcomes
    except SearchError as e:
        return {**outcomes, **_failed(real, e, time.perf_counter() - start)}
    latency = round(time.perf_counter() - start, 4)
    outcomes.update({q: SearchOutcome(list(h), None, latency)
                     for q, h in zip(real, found, strict=True)})
    return outcomes


def _failed(queries: list[str], error: SearchError, latency: float) -> dict[str, SearchOutcome]:
    logger.warning("search failed for %d queries: %s", len(queries), error)
    failure = f"{protocol.SEARCH_FAILURE_TEXT}: {error}"
    return {q: SearchOutcome([], failure, round(latency, 4)) for q in queries}


class RolloutState:
    """The protocol's state machine for trajectories under one set of settings.

    Per trajectory: :meth:`request` (what to generate next), :meth:`absorb` (the model's
    tokens: the trajectory ends, or asks to search; a search beyond the cap gets the notice),
    :meth:`insert` (the result block of a search). Pure: it never calls a model or the
    service, so any driver (batched, async, one at a time) moves the tokens.
    """

    def __init__(self, settings: RolloutSettings, tokenizer):
        self.settings = settings
        self.tokenizer = tokenizer
        self._pieces = {}  # cached encodings of the fixed parts of result blocks

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def budget_left(self, t: Trajectory) -> int:
        return self.settings.max_response_tokens - len(t.response_ids)

    def _add(self, t: Trajectory, ids: list[int], logprobs: list[float], inserted: bool) -> None:
        t.response_ids += ids
        t.logprobs += logprobs
        t.inserted += [inserted] * len(ids)
        t.loss_mask += [0 if inserted and self.settings.mask_results else 1] * len(ids)

    def request(self, t: Trajectory) -> Request:
        """The next turn of ``t``: everything so far, the budget left, stopping at
        ``</search>`` (and at ``</answer>`` with ``stop_at_answer``)."""
        s = self.settings
        return Request(t.prompt_ids + t.response_ids,
                       SamplingParams(max_new_tokens=self.budget_left(t),
                                      temperature=s.temperature, top_p=s.top_p, stop=s.stops,
                                      seed=s.seed))

    def absorb(self, t: Trajectory, g: Generation) -> str | None:
        """Append the model's tokens (cut to the budget); returns the query when ``t`` asked
        to search (``""`` for an empty one), else None: ``t.finish_reason`` is set, or (a
        search beyond the cap) the turn-limit notice was inserted and ``t`` goes on."""
        left = self.budget_left(t)
        over = len(g.token_ids) > left  # its end (a stop, EOS) lay beyond the budget
        self._add(t, list(g.token_ids[:left]), list(g.logprobs[:left]), inserted=False)
        reason = "length" if over else self._after_generation(t, g)
        if reason == "turns" and self._notify_turn_limit(t):
            return None
        if reason is not None:
            t.finish_reason = reason
            return None
        return protocol.extract_query(self.tokenizer.decode(g.token_ids)) or ""

    def _after_generation(self, t: Trajectory, g: Generation) -> TrajectoryFinish | None:
        if g.finish_reason == "eos":
            return "eos"
        if g.finish_reason == "stop" and g.stop_string == protocol.ANSWER_END:
            return "answer"
        if g.finish_reason != "stop" or self.budget_left(t) <= 0:
            return "length"
        cap = self.settings.turn_cap
        if cap is not None and len(t.turns) >= cap:
            return "turns"
        return None

    def _notify_turn_limit(self, t: Trajectory) -> bool:
        """Insert the "no more searches" notice once per trajectory (``on_max_turns``
        "answer", a cap of at least one search); False when the trajectory ends instead."""
        s = self.settings
        if s.on_max_turns != "answer" or not s.turn_cap or t.turn_limit_notices:
            return False
        self._insert_ids(t, self._pieces.setdefault("limit", self._encode(
            protocol.format_result_text(protocol.TURN_LIMIT_TEXT))))
        t.turn_limit_notices += 1
        return True

    def _result_ids(self, outcome: SearchOutcome) -> list[int]:
        head = self._pieces.setdefault("head", self._encode(f" {protocol.RESULT_START}\n"))
        tail = self._pieces.setdefault("tail", self._encode(f"\n{protocol.RESULT_END}"))
        if outcome.failure is None:
            body_text = protocol.join_documents([h.contents for h in outcome.hits])
        elif outcome.failure == protocol.INVALID_QUERY_TEXT:
            body_text = outcome.failure
        else:  # the model sees a short, stable text; the turn keeps the details
            body_text = protocol.SEARCH_FAILURE_TEXT
        body = self._encode(body_text)
        if self.settings.max_result_tokens is not None:
            body = body[: self.settings.max_result_tokens]
        return head + body + tail

    def _insert_ids(self, t: Trajectory, ids: list[int]) -> int:
        """Append inserted ids (loss mask 0, log-prob 0.0) up to the budget; returns how
        many fit, and ends ``t`` ("length") when they filled it."""
        left = self.budget_left(t)
        kept = ids[:left]
        self._add(t, kept, [0.0] * len(kept), inserted=True)
        if len(ids) >= left:
            t.finish_reason = "length"  # the inserted text filled the budget
        return len(kept)

    def insert(self, t: Trajectory, query: str, outcome: SearchOutcome) -> None:
        """The result block of ``query`` (documents or a failure text), recorded as a turn."""
        inserted = self._insert_ids(t, self._result_ids(outcome))
        t.turns.append(Turn(query, [h.id for h in outcome.hits], outcome.latency_s,
                            outcome.failure, inserted))

    def finish(self, t: Trajectory) -> Trajectory:
        """The decoded text of a finished trajectory (for humans and the reward)."""
        t.text = self.tokenizer.decode(t.response_ids)
        return t


def run_rollouts(
    prompts: Sequence[Sequence[int]],
    generator: Generator,
    searcher: BatchSearcher | None,
    tokenizer,
    settings: RolloutSettings | None = None,
    progress=None,
    on_finish: Callable[[Trajectory], None] | None = None,
) -> list[Trajectory]:
    """Roll out every prompt (token ids) to the end; one :class:`Trajectory` each, in order.

    A backend whose ``continuous`` is true runs ``generate_continuous``: the Hugging Face
    one (unless built with ``continuous=False``) batches continuously across turns, the
    trajectories that close a ``</search>`` at the same decode step sharing one search,
    getting their result blocks prefilled and rejoining the running batch while the others
    go on decoding, each keeping its KV cache; the OpenAI-compatible one sends each
    trajectory's next turn as soon as its search is done. Any other backend runs turn by
    turn: every active trajectory generates in one ``generate`` call, every query of the
    turn goes in one search, and the next turn starts when the turn's longest generation
    ends; inside a backend's ``turns()`` (the Hugging Face one's) each trajectory keeps its
    KV cache from one turn to the next, and vLLM's prefix caching does the same for its
    servers.

    ``searcher`` may be None only when nothing can search (the closed-book control).
    ``progress`` (a :class:`~research.rollout.progress.RolloutProgress`) hears every turn
    (continuously: every time trajectories end a turn, with the deepest turn reached), and
    every decode step of a backend that reports them; ``on_finish`` gets each trajectory as
    soon as it ends (its text decoded), while the others go on.
    """
    state = RolloutState(settings or RolloutSettings(), tokenizer)
    trajectories = [Trajectory(index=i, prompt_ids=list(p)) for i, p in enumerate(prompts)]
    if runs_continuously(generator):
        with _reporting(generator, progress):
            _run_continuous(trajectories, generator, searcher, state, progress, on_finish)
        return trajectories
    keeps = generator.turns() if isinstance(generator, KeepsTurns) else contextlib.nullcontext()
    with _reporting(generator, progress), keeps:
        turn = 0
        while active := [t for t in trajectories if t.finish_reason is None]:
            turn += 1
            requests = [state.request(t) for t in active]
            outputs = generator.generate([r.token_ids for r in requests],
                                         [r.params for r in requests])
            _end_turn(state, list(zip(active, outputs, strict=True)), searcher, on_finish)
            if progress is not None:
                progress.update(trajectories, turn)
    return trajectories


def _end_turn(state: RolloutState, ended: Sequence[tuple[Trajectory, Generation]],
              searcher: BatchSearcher | None,
              on_finish: Callable[[Trajectory], None] | None) -> None:
    """Absorb what the trajectories ``ended`` generated; the queries among them go in one
    search and get their results inserted; each trajectory that is done is finished."""
    searching = [(t, q) for t, g in ended if (q := state.absorb(t, g)) is not None]
    if searching:
        outcomes = search_queries(searcher, [q for _, q in searching], state.settings.top_k)
        for t, query in searching:
            state.insert(t, query, outcomes[query])
    for t, _ in ended:
        if t.finish_reason is not None:
            state.finish(t)
            if on_finish is not None:
                on_finish(t)


def _run_continuous(trajectories: list[Trajectory], generator, searcher, state: RolloutState,
                    progress, on_finish) -> None:
    """Drive a continuously batching backend: every time trajectories end a turn, their
    turn ends here and their next requests go straight back into the running batch."""
    def next_turn(done):
        ended = [(trajectories[i], g) for i, g in done]
        _end_turn(state, ended, searcher, on_finish)
        if progress is not None:
            progress.update(trajectories, max(len(t.turns) for t in trajectories))
        return [None if t.finish_reason is not None else state.request(t)
                for t, _ in ended]

    first = [state.request(t) for t in trajectories]
    generator.generate_continuous([r.token_ids for r in first], [r.params for r in first],
                                  next_turn)


@contextlib.contextmanager
def _reporting(generator: Generator, progress):
    """Hand ``progress.tokens`` to a backend that reports its decode steps (``on_step``)."""
    if progress is None or not isinstance(generator, ReportsSteps):
        yield
        return
    before = generator.on_step
    generator.on_step = progress.tokens
    try:
        yield
    finally:
        generator.on_step = before
