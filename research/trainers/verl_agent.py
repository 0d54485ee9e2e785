"""The ReSearch rollout as a verl agent loop (verl 0.9.1, ``verl.experimental.agent_loop``).

verl builds one :class:`ReSearchAgentLoop` per sample inside its agent-loop workers (Ray
actors) from the agent-loop YAML that ``research.trainers.verl_launch`` writes::

    - name: research_agent
      _target_: research.trainers.verl_agent.ReSearchAgentLoop
      search_url: http://127.0.0.1:8000
      rollout: {template: base, example: null, top_k: 5, max_turns: null, ...}
      search_timeout: 30.0

:meth:`ReSearchAgentLoop.run` drives the project's state machine
(:class:`research.rollout.engine.RolloutState`, the same code the TRL engine runs) one
trajectory at a time: the state machine says what to generate (token ids and the budget
left, stopping at ``</search>``); verl's server generates it; the state machine absorbs the
tokens; a query goes through the shared search policy
(:func:`research.rollout.engine.search_queries`, the project's HTTP client) in a bounded
thread pool (never blocking verl's event loop); the state machine inserts the result tokens
with mask 0. The
output's ``response_mask`` is the rollout's loss mask; ``extra_fields`` carry the searches,
failures and whether the response ended with EOS, which verl merges into the reward's
``extra_info`` (:mod:`research.trainers.verl_reward`).

verl's server does not say which stop ended a generation; the token ids are read back with
:func:`research.rollout.generation.generation_from_tokens` (off the event loop). The
``min_global_steps`` / ``max_global_steps`` tags verl's server client puts on each
generation are passed on for the whole trajectory (:func:`weight_versions`), as verl's own
loops do: the v1 trainer reads them every step (its off-policy metrics, and its TransferQueue
tags).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput

from research.retrieval.client import SearchClient
from research.rollout.engine import RolloutState, Trajectory, search_queries
from research.rollout.generation import generation_from_tokens, model_eos_ids
from research.rollout.settings import from_dict as settings_from_dict

log = logging.getLogger(__name__)

# One client and one bounded pool per worker process and service (agent loops are built per
# sample; these are shared by every sample of the process).
_CLIENTS: dict[tuple[str, float, int | None, str | None], SearchClient] = {}
_POOLS: dict[int, ThreadPoolExecutor] = {}


def search_client(url: str, timeout: float, retries: int | None,
                  api_key_env: str | None = None) -> SearchClient:
    key = (url, timeout, retries, api_key_env)
    if key not in _CLIENTS:
        _CLIENTS[key] = SearchClient(url, timeout=timeout, retries=retries,
                                     api_key_env=api_key_env)
    return _CLIENTS[key]


def search_pool(max_concurrent: int) -> ThreadPoolExecutor:
    if max_concurrent not in _POOLS:
        _POOLS[max_concurrent] = ThreadPoolExecutor(max_concurrent,
                                                    thread_name_prefix="research-search")
    return _POOLS[max_concurrent]


def question_of(kwargs: dict) -> str:
    """The raw question of a dataset row: ``question`` (the project's rows, read with
    ``data.prompt_key=question``), else the last user message of ``raw_prompt``."""
    if isinstance(kwargs.get("question"), str):
        return kwargs["question"]
    raw = kwargs.get("raw_prompt")
    if isinstance(raw, str):
        return raw
    messages = list(raw) if raw is not None else []
    users = [m["content"] for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ValueError("the row has no question: give the parquet a `question` column "
                         "(research data ...) or a chat `prompt` with a user message")
    return users[-1]


class ReSearchAgentLoop(AgentLoopBase):
    """verl agent loop for the ReSearch text protocol (base or chat template).

    ``rollout`` is the run's :class:`~research.rollout.settings.RolloutSettings` as a
    mapping (the ``rollout:`` section the launcher wrote); the response budget is verl's
    ``response_length`` (the launcher sets it from ``rollout.max_response_tokens``), and
    the sampling is verl's (set from the same section).

    A generation verl's server aborted (``stop_reason == "aborted"``) ends the trajectory
    there (``aborted`` in the extra fields) and it goes to the update like any other: reward
    0 (no EOS), its generated tokens in the loss, counted in its group's mean and std. verl
    0.9.1 drops nothing from an update per sample: the v1 trainer's ReplayBuffer drops whole
    prompt groups (DAPO's ``algorithm.filter_groups``; stale groups when asynchronous), and an
    agent loop that raises marks its group failed on the v1 path (kept by default, the missing
    trajectories padded) and fails the step on the legacy one. Dropping the group would lose
    its finished trajectories too, so the loop does neither.
    """

    def __init__(self, *args, search_url: str, rollout: dict | None = None,
                 search_timeout: float = 30.0, search_retries: int | None = None,
                 search_api_key_env: str | None = None, max_concurrent_searches: int = 32,
                 **kwargs):
        kwargs.pop("name", None)
        kwargs.pop("tools", None)
        super().__init__(*args, **kwargs)
        self.response_length = int(self.rollout_config.response_length)
        self.settings = settings_from_dict(dict(rollout or {})).replace(
            max_response_tokens=self.response_length)
        self.state = RolloutState(self.settings, self.tokenizer)
        self.searcher = search_client(search_url, search_timeout, search_retries,
                                      search_api_key_env)
        self.pool = search_pool(max_concurrent_searches)
        self.prompt_length = int(self.rollout_config.prompt_length)
        eos_ids = model_eos_ids(self.config.actor_rollout_ref.model.path, self.tokenizer)
        self.eos_token_ids = frozenset(eos_ids)
        self.end_id = (eos_ids[0] if self.tokenizer.eos_token_id is None
                       else self.tokenizer.eos_token_id)  # the response of a skipped prompt

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        question = question_of(kwargs)
        prompt_ids = self.settings.encode_prompt(self.tokenizer, question)
        if len(prompt_ids) > self.prompt_length:
            return self.prompt_too_long(question, prompt_ids, kwargs.get("global_steps"))
        state, t = self.state, Trajectory(index=0, prompt_ids=prompt_ids)
        request_id = uuid.uuid4().hex  # one id per trajectory: its turns stay on one server
        clock = {"generate_sequences": 0.0, "tool_calls": 0.0}
        server_fields: list[dict] = []  # verl's per-generation tags (global steps)
        while t.finish_reason is None:
            ids, p = state.request(t)
            params = {**sampling_params, "max_tokens": p.max_new_tokens, "stop": list(p.stop)}
            with _timed(clock, "generate_sequences"):
                out = await self.server_manager.generate(request_id, prompt_ids=ids,
                                                         sampling_params=params)
            server_fields.append(dict(getattr(out, "extra_fields", None) or {}))
            g = await self.loop.run_in_executor(None, functools.partial(
                generation_from_tokens, self.tokenizer, out.token_ids, out.log_probs,
                self.eos_token_ids, stop=p.stop))
            query = state.absorb(t, g)
            if out.stop_reason == "aborted":  # the server cut it: no answer, and not taken
                t.finish_reason = "aborted"  # for a truncation by the budget
                break
            if query is not None:
                with _timed(clock, "tool_calls"):
                    found = await self.loop.run_in_executor(self.pool, functools.partial(
                        search_queries, self.searcher, [query], self.settings.top_k))
                state.insert(t, query, found[query])
        tags = weight_versions(server_fields)
        return AgentLoopOutput(
            prompt_ids=t.prompt_ids, response_ids=t.response_ids, response_mask=t.loss_mask,
            response_logprobs=t.logprobs, metrics=clock,
            num_turns=2 * t.num_searches + 2,  # verl counts the prompt: user, assistant, ...
            extra_fields={**extra_fields(t), "aborted": t.finish_reason == "aborted", **tags})

    def prompt_too_long(self, question: str, prompt_ids: list[int],
                        global_steps: int | None) -> AgentLoopOutput:
        """The trajectory of a prompt over ``data.max_prompt_length``, instead of an error
        (on the legacy trainer one error fails the whole step): nothing generated, one EOS
        as the response (verl puts the reward on the last response token) with mask 0, so
        none of it reaches the loss, and ``finish_reason="prompt_too_long"`` (the reward gives
        0 and counts it in its own ``prompt_too_long``). The prompt keeps its last
        ``prompt_length`` tokens, as verl's own loops cut theirs, to fit verl's padded width.

        The launcher drops such prompts while it prepares the rows (``drop_long_prompts``);
        one gets here when ``data.max_prompt_length`` is lowered through ``cluster.verl`` or
        verl reads a parquet the launcher did not prepare. The weight-version tags are the
        dataloader's step, as verl's rollout skip tags the trajectories it replays (the v1
        trainer reads them; the legacy one passes no step)."""
        log.warning("the prompt of %r has %d tokens, over data.max_prompt_length=%d: not "
                    "rolled out, reward 0 (prompt_too_long)", question[:80], len(prompt_ids),
                    self.prompt_length)
        tags = {} if global_steps is None else {"min_global_steps": int(global_steps),
                                                "max_global_steps": int(global_steps)}
        return AgentLoopOutput(
            prompt_ids=prompt_ids[-self.prompt_length:], response_ids=[self.end_id],
            response_mask=[0], response_logprobs=[0.0],
            metrics={"generate_sequences": 0.0, "tool_calls": 0.0}, num_turns=1,
            extra_fields={"searches": 0, "search_failures": 0, "complete": False,
                          "finish_reason": "prompt_too_long", "aborted": False, **tags})


def extra_fields(t) -> dict:
    """The trajectory's summary as verl's extra fields, without its queries: verl stacks each
    field across a batch into a numpy object array, where lists of queries (ragged, or of one
    length within a worker's batch and another in the next) would not concatenate."""
    return {k: v for k, v in t.summary().items() if k != "queries"}


def weight_versions(server_fields: list[dict]) -> dict[str, int]:
    """``min_global_steps`` / ``max_global_steps`` of a trajectory: the oldest and the newest
    weights its generations used. verl's server client tags each generation with them (one
    that its fully-async client resumed after a weight update spans several), or with
    ``global_steps`` alone; none when the server knows no step."""
    lows = [f.get("min_global_steps", f.get("global_steps")) for f in server_fields]
    highs = [f.get("max_global_steps", f.get("global_steps")) for f in server_fields]
    lows, highs = [s for s in lows if s is not None], [s for s in highs if s is not None]
    if not (lows and highs):
        return {}
    return {"min_global_steps": min(lows), "max_global_steps": max(highs)}


@contextlib.contextmanager
def _timed(clock: dict[str, float], key: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        clock[key] += time.perf_counter() - start
