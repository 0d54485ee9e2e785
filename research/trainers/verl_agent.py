"""The ReSearch rollout as a verl agent loop (verl 0.9.1, ``verl.experimental.agent_loop``).

verl builds one :class:`ReSearchAgentLoop` per sample inside its agent-loop workers (Ray
actors) from the agent-loop YAML that ``research.trainers.verl_launch`` writes::

    - name: research_agent
      _target_: research.trainers.verl_agent.ReSearchAgentLoop
      search_url: http://127.0.0.1:8000
      top_k: 5
      ...

:meth:`ReSearchAgentLoop.run` drives the project's state machine
(:class:`research.rollout.engine.RolloutState`, the same code the TRL engine runs) one
trajectory at a time: generate through verl's server (token ids in, token ids out, stopping at
``</search>`` with the budget left), search through the project's HTTP client in a bounded
thread pool (never blocking verl's event loop), insert the result tokens with mask 0. The
output's ``response_mask`` is the rollout's loss mask; ``extra_fields`` carry the searches,
failures and whether the response ended with EOS, which verl merges into the reward's
``extra_info`` (:mod:`research.trainers.verl_reward`).

verl's server does not say which stop ended a generation; the token ids are read back with
:func:`research.rollout.generation.generation_from_tokens` (off the event loop). The
``min_global_steps`` / ``max_global_steps`` tags verl's server puts on each generation are
passed on, as verl's own loops do (its trainer reads them every step).
"""

from __future__ import annotations

import functools
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput

from research.retrieval.client import SearchClient
from research.rollout.engine import RolloutConfig, RolloutState, Trajectory
from research.rollout.generation import generation_from_tokens, model_eos_ids
from research.rollout.prompts import encode_prompt

# One client and one bounded pool per worker process and service (agent loops are built per
# sample; these are shared by every sample of the process).
_CLIENTS: dict[tuple[str, float, int], SearchClient] = {}
_POOLS: dict[int, ThreadPoolExecutor] = {}


def search_client(url: str, timeout: float, retries: int) -> SearchClient:
    key = (url, timeout, retries)
    if key not in _CLIENTS:
        _CLIENTS[key] = SearchClient(url, timeout=timeout, retries=retries)
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
    """verl agent loop for the ReSearch text protocol (base or chat template)."""

    def __init__(self, *args, search_url: str, top_k: int = 5, max_turns: int | None = None,
                 max_result_tokens: int | None = None, template: str = "base",
                 clean: bool = False, example: bool | str = False, mask_results: bool = True,
                 stop_at_answer: bool = False, on_max_turns: str = "answer",
                 search_timeout: float = 30.0, search_retries: int = 3,
                 max_concurrent_searches: int = 32, **kwargs):
        kwargs.pop("name", None)
        kwargs.pop("tools", None)
        super().__init__(*args, **kwargs)
        self.template, self.clean, self.example = template, clean, example
        self.response_length = int(self.rollout_config.response_length)
        self.rollout = RolloutConfig(max_response_tokens=self.response_length,
                                     max_turns=max_turns, top_k=top_k,
                                     max_result_tokens=max_result_tokens,
                                     mask_results=mask_results,
                                     stop_at_answer=stop_at_answer, on_max_turns=on_max_turns)
        self.searcher = search_client(search_url, search_timeout, search_retries)
        self.pool = search_pool(max_concurrent_searches)
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.eos_token_ids = frozenset(model_eos_ids(self.config.actor_rollout_ref.model.path,
                                                     self.tokenizer))

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        question = question_of(kwargs)
        prompt_ids = encode_prompt(self.tokenizer, question, self.template, clean=self.clean,
                                   example=self.example)
        if len(prompt_ids) > self.prompt_length:
            raise ValueError(f"the prompt of {question[:80]!r} has {len(prompt_ids)} tokens, "
                             f"over data.max_prompt_length={self.prompt_length}: raise "
                             "cluster.max_prompt_tokens or drop the question")
        state = RolloutState(None, self.searcher, self.tokenizer, self.rollout)
        t = Trajectory(index=0, prompt_ids=prompt_ids)
        request_id = uuid.uuid4().hex  # one id per trajectory: its turns stay on one server
        generating = searching = 0.0
        server_fields: list[dict] = []  # verl's per-generation tags (global steps)
        while t.finish_reason is None:
            left = state.budget_left(t)
            params = {**sampling_params, "max_tokens": left, "stop": list(self.rollout.stops)}
            start = time.perf_counter()
            out = await self.server_manager.generate(
                request_id, prompt_ids=t.prompt_ids + t.response_ids, sampling_params=params)
            generating += time.perf_counter() - start
            server_fields.append(dict(getattr(out, "extra_fields", None) or {}))
            logprobs = out.log_probs[:left] if out.log_probs is not None else None
            g = await self.loop.run_in_executor(None, functools.partial(
                generation_from_tokens, self.tokenizer, out.token_ids[:left], logprobs,
                self.eos_token_ids, stop=self.rollout.stops))
            if not g.token_ids:  # nothing came back: end rather than loop
                t.finish_reason = "length"
                break
            query = state.record_generation(t, g)
            if query is not None:
                start = time.perf_counter()
                await self.loop.run_in_executor(self.pool, state.search, [(t, query)])
                searching += time.perf_counter() - start
        n = self.response_length
        steps = [f["global_steps"] for f in server_fields if f.get("global_steps") is not None]
        tags = {"min_global_steps": steps[0], "max_global_steps": steps[-1]} if steps else {}
        return AgentLoopOutput(
            prompt_ids=t.prompt_ids, response_ids=t.response_ids[:n],
            response_mask=t.loss_mask[:n], response_logprobs=t.logprobs[:n],
            num_turns=2 * t.num_searches + 1,
            metrics={"generate_sequences": generating, "tool_calls": searching},
            extra_fields={"num_searches": t.num_searches, "num_search_failures": t.num_failures,
                          "ended_with_eos": t.ended_with_eos,
                          "finish_reason": t.finish_reason, **tags})
