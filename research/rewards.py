"""Rule-based rewards of ReSearch, computed on the response text alone.

Two rewards share one signature, ``fn(response, ground_truth, *, complete=None,
eos_token=None) -> RewardResult``:

- ``"v1"`` (alias ``"em"``), the original's: 0 for a bad format, a response that did not
  end with EOS, or no extractable ``\\boxed{}`` answer; 1.0 if the boxed answer equals a
  ground truth after lower-casing only; else 0.1.
- ``"f1"``, the paper version: the same gates, then the token F1 (SQuAD normalization, max
  over golden answers) if it is above 0, else 0.1.

The format rules follow ``validate_template_format`` / ``validate_format`` of
Agent-RL/ReSearch (``verl/verl/utils/reward_score/qa.py`` in the original,
``src/verl/utils/reward_score/re_search.py`` in the paper version) exactly, in the same
order. Their quirks are kept on purpose:

- tags are counted over the whole response, inserted ``<result>`` text included;
- ``<result>`` / ``</result>`` are not counted; they are only checked after each ``<search>``;
- the search walk resumes after the ``</result>`` it matched, so a ``<search>`` that opens
  before that point (two searches sharing one result block) is not checked again;
- the answer needs the substrings ``\\boxed{`` and ``}`` anywhere from ``<answer>`` to
  ``</answer>``, not a balanced box.

Deviations from the original, all in how the caller is spoken to or in edge cases:

- the response is never split on the prompt template (the original split the decoded
  prompt + response on "Assistant:"); the caller passes the response only;
- whether generation ended properly (at EOS, or at ``</answer>`` where the rollout stops
  there) comes from the caller (``complete``: the rollout's ``Trajectory.complete``), or from
  the literal ``eos_token`` at the end of the text when that flag is not given (the original
  only had the second, with ``"<|endoftext|>"`` hard-coded in the original);
- the box is found by :func:`research.protocol.extract_answer`: the last ``\\boxed``, which
  must be followed by ``{`` (brace-matched) or a space; the original let any ``\\boxed ``
  space form win over a later ``\\boxed{``, and the space form's content is stripped here;
- ``ground_truth`` may be a list (any match counts in v1);
- reasons are short fixed strings (the original appended the answer), so they group well in
  rollout dumps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from research.errors import ConfigError
from research.metrics import em, golden_list, token_scores
from research.protocol import (
    ANSWER_END,
    ANSWER_START,
    BOXED,
    RESULT_END,
    RESULT_START,
    SEARCH_END,
    SEARCH_START,
    THINK_END,
    THINK_START,
    extract_answer,
)

WRONG_ANSWER_SCORE = 0.1


@dataclass(frozen=True)
class RewardResult:
    """A reward, the short human reason for it (shown in rollout dumps), and what the reward
    found in the response, so that no caller parses the reason:

    - ``answered``: a boxed answer could be extracted;
    - ``correct``: that answer matches a golden answer under the reward's own rule (v1: equal
      after lower-casing; f1: token F1 of 1; graded: normalised exact match), whatever the
      format;
    - ``format_ok``: the tags follow the protocol's format rules;
    - ``complete``: generation ended properly (EOS or the answer's stop), not at the budget.

    ``valid`` is every gate passed (format, a proper end, a box): the samples GRPO can tell
    apart from broken ones. Two results are equal when their score and reason are (the facts
    follow from the response and the reward).
    """

    score: float
    reason: str
    answered: bool = field(default=False, compare=False)
    correct: bool = field(default=False, compare=False)
    format_ok: bool = field(default=False, compare=False)
    complete: bool = field(default=False, compare=False)

    @property
    def valid(self) -> bool:
        return self.format_ok and self.complete and self.answered

    @property
    def correct_and_valid(self) -> bool:
        """Full marks: the reason is "correct" (the accuracy every trainer logs)."""
        return self.correct and self.valid


class RewardFn(Protocol):
    """The signature every registered reward function has."""

    def __call__(
        self,
        response: str,
        ground_truth: str | Sequence[str],
        *,
        complete: bool | None = None,
        eos_token: str | None = None,
    ) -> RewardResult: ...


def _answer_tag_problem(response: str) -> str | None:
    """Why ``<answer>`` / ``</answer>`` do not occur exactly once each, or None."""
    for tag, name in ((ANSWER_START, "answer tag"), (ANSWER_END, "answer end tag")):
        count = response.count(tag)
        if count == 0:
            return f"no {name}"
        if count > 1:
            return f"{name} repeated"
    return None


def _search_tag_problem(response: str) -> str | None:
    """Why some ``<search>`` is not followed by ``</search>``, ``<result>``, ``</result>``."""
    pos = 0
    while (search := response.find(SEARCH_START, pos)) >= 0:
        search_end = response.find(SEARCH_END, search)
        result = response.find(RESULT_START, search)
        result_end = response.find(RESULT_END, result) if result >= 0 else -1
        if -1 in (search_end, result, result_end):
            return "search/result tags incomplete"
        if not search < search_end < result < result_end:
            return "search/result tags out of order"
        pos = result_end
    return None


def format_problem(response: str) -> str | None:
    """The first format rule the response breaks, or None when the format is valid.

    >>> format_problem("<think> t </think> <answer> \\\\boxed{x} </answer>") is None
    True
    >>> format_problem("<answer> \\\\boxed{x} </answer>")
    'no think tags'
    """
    think, think_end = response.count(THINK_START), response.count(THINK_END)
    if think != think_end:
        return "think tags unpaired"
    if think == 0:
        return "no think tags"
    problem = _answer_tag_problem(response) or _search_tag_problem(response)
    if problem:
        return problem
    start, end = response.find(ANSWER_START), response.find(ANSWER_END)
    if start > end:
        return "answer tags out of order"
    answer = response[start:end]
    if BOXED + "{" not in answer or "}" not in answer:
        return "no \\boxed{} in answer"
    return None


def _resolve_eos(
    response: str, complete: bool | None, eos_token: str | None
) -> tuple[str, bool]:
    """The response without a trailing ``eos_token``, and whether generation ended at EOS."""
    has_token = bool(eos_token) and response.endswith(eos_token)
    if has_token:
        response = response[: -len(eos_token)]
    if complete is None:
        if not eos_token:
            raise ValueError(
                "pass complete (whether generation ended properly: the rollout's "
                "Trajectory.complete) or eos_token "
                "(the literal EOS text at the end of the response)"
            )
        return response, has_token
    return response, complete


@dataclass(frozen=True)
class _Found:
    """What a response holds, before any score: its end, format problem and boxed answer."""

    ended: bool
    problem: str | None
    answer: str | None

    def result(self, score: float, reason: str, correct: bool) -> RewardResult:
        return RewardResult(score, reason, answered=self.answer is not None,
                            correct=correct, format_ok=self.problem is None,
                            complete=self.ended)


def _found(response: str, complete: bool | None, eos_token: str | None) -> _Found:
    response, ended = _resolve_eos(response, complete, eos_token)
    return _Found(ended, format_problem(response), extract_answer(response))


def _gated(found: _Found, correct: bool) -> RewardResult | None:
    """The zero reward of the first gate ``found`` fails (format, EOS, box), or None."""
    if found.problem:
        return found.result(0.0, f"bad format: {found.problem}", correct)
    if not found.ended:
        return found.result(0.0, "no eos (over length)", correct)
    if found.answer is None:
        return found.result(0.0, "cannot extract boxed answer", False)
    return None


def _matches(answer: str | None, ground_truth, rule) -> bool:
    """Whether ``answer`` matches a golden answer under ``rule`` (no answer or no golden
    answers: False; an empty ground truth is refused where the score needs it)."""
    golds = golden_list(ground_truth)
    return answer is not None and bool(golds) and rule(answer, golds)


def _v1_rule(answer: str, golds: list[str]) -> bool:
    return any(answer.lower() == gold.lower() for gold in golds)


def _em_rule(answer: str, golds: list[str]) -> bool:
    return em(answer, golds) == 1.0


def reward_v1(
    response: str,
    ground_truth: str | Sequence[str],
    *,
    complete: bool | None = None,
    eos_token: str | None = None,
) -> RewardResult:
    """First-version reward: format and EOS gates, then lower-cased exact match.

    >>> ok = "<think> t </think> <answer> \\\\boxed{Paris} </answer>"
    >>> r = reward_v1(ok, "paris", complete=True)
    >>> r.score, r.reason, r.correct, r.valid
    (1.0, 'correct', True, True)
    >>> r = reward_v1(ok + "<|endoftext|>", "Lyon", eos_token="<|endoftext|>")
    >>> r.score, r.reason, r.correct, r.valid
    (0.1, 'wrong answer', False, True)
    """
    found = _found(response, complete, eos_token)
    correct = _matches(found.answer, ground_truth, _v1_rule)
    gated = _gated(found, correct)
    if gated is not None:
        return gated
    _checked_golds(ground_truth)  # an empty ground truth is refused here
    if correct:
        return found.result(1.0, "correct", True)
    return found.result(WRONG_ANSWER_SCORE, "wrong answer", False)


def reward_f1(
    response: str,
    ground_truth: str | Sequence[str],
    *,
    complete: bool | None = None,
    eos_token: str | None = None,
) -> RewardResult:
    """Paper-version reward: the same gates, then token F1 if above 0, else 0.1.

    >>> ok = "<think> t </think> <answer> \\\\boxed{Barack Obama} </answer>"
    >>> r = reward_f1(ok, ["Obama"], complete=True)
    >>> r.score, r.reason, r.correct, r.valid
    (0.6666666666666666, 'partial match', False, True)
    """
    found = _found(response, complete, eos_token)
    golds = golden_list(ground_truth)
    score = token_scores(found.answer, golds)["f1"] if found.answer is not None and golds else 0.0
    gated = _gated(found, score >= 1.0)
    if gated is not None:
        return gated
    _checked_golds(ground_truth)  # an empty ground truth is refused here
    if score >= 1.0:
        return found.result(score, "correct", True)
    if score > 0.0:
        return found.result(score, "partial match", False)
    return found.result(WRONG_ANSWER_SCORE, "wrong answer", False)


# Graded credit (Search-R1's later reward, arXiv 2505.15117): a named alternative, not the
# protocol's reward. Keys: (answer correct, format valid and ended properly).
GRADED_SCORES = MappingProxyType({(True, True): 1.0, (True, False): 0.8,
                                  (False, True): 0.2, (False, False): 0.1})


def reward_graded(
    response: str,
    ground_truth: str | Sequence[str],
    *,
    complete: bool | None = None,
    eos_token: str | None = None,
) -> RewardResult:
    """Partial credit: a correct answer (normalised exact match) scores 1.0 in a valid
    response and 0.8 in an invalid one; a wrong one 0.2 in a valid response, 0.1 in an
    invalid one; no boxed answer at all scores 0. Not the protocol's reward: for small models
    whose samples rarely pass the format (``reward.name=graded``).

    >>> ok = "<think> t </think> <answer> \\\\boxed{Paris} </answer>"
    >>> r = reward_graded(ok, ["paris"], complete=True)
    >>> r.score, r.reason, r.correct, r.valid
    (1.0, 'correct', True, True)
    >>> r = reward_graded("<answer> \\\\boxed{Paris} </answer>", ["paris"], complete=True)
    >>> r.score, r.reason, r.correct, r.format_ok, r.valid
    (0.8, 'correct, bad format: no think tags', True, False, False)
    >>> r = reward_graded(ok, ["Lyon"], complete=False)
    >>> r.score, r.reason, r.correct, r.complete
    (0.1, 'wrong answer, no eos (over length)', False, False)
    """
    found = _found(response, complete, eos_token)
    if found.answer is None:
        return found.result(0.0, "cannot extract boxed answer", False)
    problem = found.problem or (None if found.ended else "no eos (over length)")
    correct = _em_rule(found.answer, _checked_golds(ground_truth))
    reason = "correct" if correct else "wrong answer"
    if problem is not None:
        reason += f", {problem if problem.startswith('no eos') else 'bad format: ' + problem}"
    return found.result(GRADED_SCORES[(correct, problem is None)], reason, correct)


def _checked_golds(ground_truth: str | Sequence[str]) -> list[str]:
    """The ground truths as a non-empty list of strings."""
    golds = golden_list(ground_truth)
    if not golds:
        raise ValueError("ground_truth is empty: give at least one golden answer")
    return golds


REWARD_FNS: MappingProxyType[str, RewardFn] = MappingProxyType(
    {"v1": reward_v1, "em": reward_v1, "f1": reward_f1, "graded": reward_graded}
)


def get_reward_fn(name: str) -> RewardFn:
    """The reward function registered under ``name`` (``"v1"``, ``"em"``, ``"f1"``).

    >>> get_reward_fn("em") is reward_v1
    True
    """
    try:
        return REWARD_FNS[name]
    except KeyError:
        valid = ", ".join(sorted(REWARD_FNS))
        raise ConfigError(f"unknown reward {name!r}; valid names: {valid}") from None
