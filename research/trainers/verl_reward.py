"""The reward verl calls (``reward.custom_reward_function.path`` = this file, ``.name`` =
``compute_score``): the project's reward on the decoded response.

verl 0.9.1's reward loop calls ``compute_score(data_source=..., solution_str=...,
ground_truth=..., extra_info=..., **reward_kwargs)`` per sample. ``solution_str`` is the
response decoded without special tokens (the EOS is gone), so whether the response ended
properly (``complete``: at EOS, or at ``</answer>`` where the rollout stops there) comes from
the agent loop's ``extra_fields`` (merged into ``extra_info``). The result is a
dict of numbers with the same keys for every sample (verl logs them at validation and keeps
them in its rollout dumps): ``score``, ``acc``
(the answer was correct, every gate passed), ``format_ok`` (it passed every gate: format,
a proper end, a boxed answer; under ``graded`` a correct answer in a broken format is not
ok), ``searches``,
``prompt_too_long`` (1: the agent loop did not roll the prompt out, being over
``data.max_prompt_length``: its ``finish_reason``; score 0).
``reward_kwargs.reward_name`` picks the reward (``v1`` by default, or ``f1``).

This module imports nothing from verl; the tests call it directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from research.metrics import golden_list
from research.rewards import get_reward_fn


def compute_score(data_source: str | None = None, solution_str: str = "",
                  ground_truth: Any = None, extra_info: Mapping | None = None,
                  reward_name: str = "v1", **kwargs) -> dict[str, float]:
    """Score one response; see the module docstring.

    >>> r = compute_score("hotpotqa", "<think> t </think> <answer> \\\\boxed{Paris} </answer>",
    ...                   "paris", {"complete": True, "searches": 1})
    >>> r["score"], r["acc"], r["format_ok"], r["searches"]
    (1.0, 1.0, 1.0, 1.0)
    """
    info = dict(extra_info or {})
    if info.get("finish_reason") == "prompt_too_long":  # not rolled out (verl_agent)
        return {"score": 0.0, "acc": 0.0, "format_ok": 0.0, "searches": 0.0,
                "prompt_too_long": 1.0}
    # the research_agent loop always says; a row rolled out by another loop counts as not
    # ended (reward 0) rather than stopping verl's reward worker
    ended = bool(info.get("complete", False))
    result = get_reward_fn(reward_name)(solution_str, golden_list(ground_truth),
                                        complete=ended)
    return {"score": float(result.score),
            "acc": float(result.correct_and_valid),
            "format_ok": float(result.valid),
            "searches": float(info.get("searches", 0) or 0), "prompt_too_long": 0.0}
