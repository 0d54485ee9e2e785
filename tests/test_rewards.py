"""Tests of the rule-based rewards: every format rule of PROTOCOL.md §5, EOS, registry."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from research import rewards
from research.rewards import (
    REWARD_FNS,
    RewardResult,
    format_problem,
    get_reward_fn,
    reward_f1,
    reward_v1,
)

EOS = "<|endoftext|>"
GOOD = (
    "<think> I need the dynasty. </think>\n<search> longest chinese dynasty </search> <result>\n"
    '"Zhou dynasty"\nThe Zhou dynasty lasted longest.\n</result> <think> Now its first king. '
    "</think>\n<answer> The final answer is \\[ \\boxed{King Wu of Zhou} \\] </answer>"
)


TAIL = " <answer> \\boxed{Paris} </answer>"


def answer(box: str = "\\boxed{Paris}") -> str:
    """A minimal valid response with ``box`` as the answer."""
    return f"<think> t </think> <answer> {box} </answer>"



def test_reward_result_is_frozen() -> None:
    result = RewardResult(1.0, "correct")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.score = 0.0  # type: ignore[misc]


# --- the format rules, one row each -------------------------------------------------------

CORRECT = RewardResult(1.0, "correct")
WRONG = RewardResult(0.1, "wrong answer")
NO_BOX = RewardResult(0.0, "cannot extract boxed answer")


def bad(problem: str) -> RewardResult:
    """The zero reward of a broken format rule."""
    return RewardResult(0.0, f"bad format: {problem}")


# Each row: a response and its v1 reward against "Paris" when generation ended at EOS.
FORMAT_CASES = [
    # valid
    ("full trajectory", GOOD, WRONG),
    ("no search at all", answer(), CORRECT),
    ("two think pairs", "<think>a</think><think>b</think>" + TAIL, CORRECT),
    # think tags
    (
        "think opened twice",
        "<think> <think> </think> <answer> \\boxed{x} </answer>",
        bad("think tags unpaired"),
    ),
    ("think end missing", "<think> t <answer> \\boxed{x} </answer>", bad("think tags unpaired")),
    ("think start missing", "t </think> <answer> \\boxed{x} </answer>", bad("think tags unpaired")),
    ("no think tags", "<answer> \\boxed{x} </answer>", bad("no think tags")),
    # think order is not checked by the original
    ("think tags reversed", "</think> t <think> <answer> \\boxed{x} </answer>", WRONG),
    # answer tags
    ("no answer tags", "<think> t </think> \\boxed{x}", bad("no answer tag")),
    ("no answer start", "<think> t </think> \\boxed{x} </answer>", bad("no answer tag")),
    ("no answer end", "<think> t </think> <answer> \\boxed{x}", bad("no answer end tag")),
    ("answer twice", answer() + " " + TAIL, bad("answer tag repeated")),
    (
        "answer start twice",
        "<think> t </think> <answer> <answer> \\boxed{x} </answer>",
        bad("answer tag repeated"),
    ),
    (
        "answer end twice",
        "<think> t </think> <answer> \\boxed{x} </answer> </answer>",
        bad("answer end tag repeated"),
    ),
    (
        "answer reversed",
        "<think> t </think> </answer> \\boxed{x} <answer>",
        bad("answer tags out of order"),
    ),
    # search / result tags
    (
        "search unclosed",
        "<think> t </think> <search> q <result> r </result> " + TAIL,
        bad("search/result tags incomplete"),
    ),
    (
        "search without result",
        "<think> t </think> <search> q </search> " + TAIL,
        bad("search/result tags incomplete"),
    ),
    (
        "result unclosed",
        "<think> t </think> <search> q </search> <result> r " + TAIL,
        bad("search/result tags incomplete"),
    ),
    (
        "result before search end",
        "<think> t </think> <search> q <result> r </result> </search> " + TAIL,
        bad("search/result tags out of order"),
    ),
    (
        "result end before result",
        "<think> t </think> <search> q </search> </result> r <result> x </result> " + TAIL,
        CORRECT,
    ),
    (
        "second search incomplete",
        "<think> t </think> <search> a </search> <result> r </result> <search> b </search> " + TAIL,
        bad("search/result tags incomplete"),
    ),
    (
        "two searches, two results",
        "<think> t </think> <search> a </search> <result> r </result>"
        " <search> b </search> <result> s </result> " + TAIL,
        CORRECT,
    ),
    # faithful quirks of the original walk
    (
        "two searches share one result",
        "<think> t </think> <search> a </search> <search> b </search> <result> r </result> " + TAIL,
        CORRECT,
    ),
    ("result tags alone are not counted", "<think> t </think> <result> r " + TAIL, CORRECT),
    ("stray search end is not checked", "<think> t </think> </search> " + TAIL, CORRECT),
    (
        "tags inside the result text count",
        "<think> t </think> <search> q </search> <result> <think> </result> " + TAIL,
        bad("think tags unpaired"),
    ),
    # the boxed answer
    ("no box in answer", answer("Paris"), bad("no \\boxed{} in answer")),
    (
        "box outside answer",
        "<think> \\boxed{Paris} </think> <answer> Paris </answer>",
        bad("no \\boxed{} in answer"),
    ),
    ("space form only", answer("\\boxed Paris"), bad("no \\boxed{} in answer")),
    ("fbox only", answer("\\fbox{Paris}"), bad("no \\boxed{} in answer")),
    ("box without closing brace", answer("\\boxed{Paris"), bad("no \\boxed{} in answer")),
    ("unbalanced box with a stray brace", answer("} \\boxed{Paris"), NO_BOX),
]


def _problem(expected: RewardResult) -> str | None:
    """The format problem a table row expects, or None for a valid format."""
    prefix = "bad format: "
    return expected.reason[len(prefix) :] if expected.reason.startswith(prefix) else None


@pytest.mark.parametrize(
    ("response", "expected"),
    [pytest.param(r, e, id=name) for name, r, e in FORMAT_CASES],
)
def test_format_rules(response: str, expected: RewardResult) -> None:
    assert format_problem(response) == _problem(expected)
    assert reward_v1(response, "Paris", complete=True) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [pytest.param(r, e, id=name) for name, r, e in FORMAT_CASES if _problem(e)],
)
@pytest.mark.parametrize("eos", [True, False])
def test_bad_format_scores_zero_in_both_rewards(
    response: str, expected: RewardResult, eos: bool
) -> None:
    assert reward_v1(response, "Paris", complete=eos) == expected
    assert reward_f1(response, "Paris", complete=eos) == expected


# --- the v1 reward, gate by gate -----------------------------------------------------------

V1_CASES = [
    ("correct", GOOD, "King Wu of Zhou", True, 1.0, "correct"),
    ("correct, case folded", GOOD, "king wu OF zhou", True, 1.0, "correct"),
    ("over length", GOOD, "King Wu of Zhou", False, 0.0, "no eos (over length)"),
    (
        "bad format beats over length",
        answer("x"),
        "x",
        False,
        0.0,
        "bad format: no \\boxed{} in answer",
    ),
    ("wrong answer", GOOD, "King Wen of Zhou", True, 0.1, "wrong answer"),
    (
        "no normalization beyond case",
        answer("\\boxed{The Paris}"),
        "Paris",
        True,
        0.1,
        "wrong answer",
    ),
    ("punctuation matters", answer("\\boxed{Paris.}"), "Paris", True, 0.1, "wrong answer"),
    (
        "spaces inside the box matter",
        answer("\\boxed{ Paris }"),
        "Paris",
        True,
        0.1,
        "wrong answer",
    ),
    ("last box wins", answer("\\boxed{Lyon} no, \\boxed{Paris}"), "Paris", True, 1.0, "correct"),
    ("nested braces", answer("\\boxed{\\text{Paris}}"), "\\text{paris}", True, 1.0, "correct"),
    ("empty box", answer("\\boxed{}"), "Paris", True, 0.1, "wrong answer"),
    (
        "unbalanced last box",
        answer("} \\boxed{Paris"),
        "Paris",
        True,
        0.0,
        "cannot extract boxed answer",
    ),
    ("list ground truth", GOOD, ["Wu", "King Wu of Zhou"], True, 1.0, "correct"),
    ("list ground truth, none match", GOOD, ["Wu", "Ji Fa"], True, 0.1, "wrong answer"),
]


@pytest.mark.parametrize(
    ("response", "truth", "eos", "score", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in V1_CASES],
)
def test_reward_v1(response: str, truth, eos: bool, score: float, reason: str) -> None:
    assert reward_v1(response, truth, complete=eos) == RewardResult(score, reason)


# --- EOS handling --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "complete", "eos_token", "score", "reason"),
    [
        (EOS, None, EOS, 1.0, "correct"),
        ("", None, EOS, 0.0, "no eos (over length)"),
        (EOS + "\n", None, EOS, 0.0, "no eos (over length)"),
        ("", True, None, 1.0, "correct"),
        ("", False, None, 0.0, "no eos (over length)"),
        # the flag decides when given; the token is still stripped
        (EOS, False, EOS, 0.0, "no eos (over length)"),
        ("", True, EOS, 1.0, "correct"),
        (EOS, True, EOS, 1.0, "correct"),
        ("<|im_end|>", None, "<|im_end|>", 1.0, "correct"),
    ],
)
def test_eos(suffix: str, complete, eos_token, score: float, reason: str) -> None:
    response = answer() + suffix
    result = reward_v1(response, "Paris", complete=complete, eos_token=eos_token)
    assert result == RewardResult(score, reason)


def test_eos_token_must_end_the_response() -> None:
    response = answer() + EOS + " more"
    assert reward_v1(response, "Paris", eos_token=EOS) == RewardResult(0.0, "no eos (over length)")


@pytest.mark.parametrize("reward_fn", [reward_v1, reward_f1])
def test_eos_information_is_required(reward_fn) -> None:
    with pytest.raises(ValueError, match="complete"):
        reward_fn(answer(), "Paris")
    with pytest.raises(ValueError, match="complete"):
        reward_fn(answer(), "Paris", eos_token="")


def test_response_is_not_split_on_the_prompt_template() -> None:
    response = "<think> User: x. Assistant: y </think> <answer> \\boxed{Paris} </answer>"
    assert reward_v1(response, "Paris", complete=True).score == 1.0


@pytest.mark.parametrize("reward_fn", [reward_v1, reward_f1])
@pytest.mark.parametrize("truth", [[], ()])
def test_empty_ground_truth_is_an_error(reward_fn, truth) -> None:
    with pytest.raises(ValueError, match="ground_truth is empty"):
        reward_fn(answer(), truth, complete=True)


# --- the F1 reward -------------------------------------------------------------------------

F1_CASES = [
    ("exact", "\\boxed{Paris}", "Paris", 1.0, "correct"),
    ("normalized exact", "\\boxed{The  Paris!}", "paris", 1.0, "correct"),
    ("partial", "\\boxed{Barack Obama}", ["Obama"], 2 / 3, "partial match"),
    ("max over answers", "\\boxed{Barack Obama}", ["Michelle", "Barack Obama"], 1.0, "correct"),
    ("no overlap", "\\boxed{Lyon}", "Paris", 0.1, "wrong answer"),
    ("yes/no mismatch", "\\boxed{yes}", "no", 0.1, "wrong answer"),
    ("yes match", "\\boxed{Yes.}", "yes", 1.0, "correct"),
    ("empty box", "\\boxed{}", "Paris", 0.1, "wrong answer"),
    ("only articles", "\\boxed{the}", "the", 0.1, "wrong answer"),
]


@pytest.mark.parametrize(
    ("box", "truth", "score", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in F1_CASES],
)
def test_reward_f1(box: str, truth, score: float, reason: str) -> None:
    result = reward_f1(answer(box), truth, complete=True)
    assert result.score == pytest.approx(score)
    assert result.reason == reason


@pytest.mark.parametrize(
    ("response", "eos", "reason"),
    [
        (answer(), False, "no eos (over length)"),
        (answer("} \\boxed{Paris"), True, "cannot extract boxed answer"),
        ("<answer> \\boxed{Paris} </answer>", True, "bad format: no think tags"),
    ],
)
def test_reward_f1_gates(response: str, eos: bool, reason: str) -> None:
    assert reward_f1(response, "Paris", complete=eos) == RewardResult(0.0, reason)


# --- registry ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fn"), [("v1", reward_v1), ("em", reward_v1), ("f1", reward_f1),
                                        ("graded", rewards.reward_graded)])
def test_registry(name: str, fn) -> None:
    assert get_reward_fn(name) is fn


@pytest.mark.parametrize("name", ["", "V1", "exact", "f1_score"])
def test_registry_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match="valid names: em, f1, graded, v1"):
        get_reward_fn(name)


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        REWARD_FNS["mine"] = reward_v1  # type: ignore[index]


# --- properties ----------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "<think>",
        "</think>",
        "<search>",
        "</search>",
        "<result>",
        "</result>",
        "<answer>",
        "</answer>",
        "\\boxed{",
        "\\boxed ",
        "}",
        "{",
        "Paris",
        " x ",
        "$",
    ]
)
_RESPONSES = st.lists(_PIECES, max_size=16).map("".join)


@given(_RESPONSES, st.booleans())
def test_v1_scores_are_the_three_levels(response: str, eos: bool) -> None:
    result = reward_v1(response, "Paris", complete=eos)
    assert result.score in (0.0, 0.1, 1.0)
    assert result.reason
    if format_problem(response) is not None:
        assert result.reason.startswith("bad format: ")


@given(_RESPONSES, st.booleans())
def test_f1_scores_are_bounded(response: str, eos: bool) -> None:
    result = reward_f1(response, ["Paris", "x"], complete=eos)
    assert 0.0 <= result.score <= 1.0
    assert (result.score == 0.0) == (reward_v1(response, "x", complete=eos).score == 0.0)


@given(st.text(alphabet=st.characters(exclude_characters="{}\\<>"), min_size=1, max_size=20))
def test_v1_correct_on_own_answer(text: str) -> None:
    response = answer(f"\\boxed{{{text}}}")
    assert reward_v1(response, text, complete=True) == RewardResult(1.0, "correct")


@pytest.mark.parametrize(
    ("response", "eos", "truth", "score", "reason"),
    [
        ("<think> t </think> <answer> \\boxed{ the Paris } </answer>", True, ["paris"], 1.0,
         "correct"),
        ("<answer> \\boxed{Paris} </answer>", True, ["paris"], 0.8,
         "correct, bad format: no think tags"),
        ("<think> t </think> <answer> \\boxed{Paris} </answer>", False, ["paris"], 0.8,
         "correct, no eos (over length)"),
        ("<think> t </think> <answer> \\boxed{Lyon} </answer>", True, ["paris"], 0.2,
         "wrong answer"),
        ("<think> t <answer> \\boxed{Lyon} </answer>", True, ["paris"], 0.1,
         "wrong answer, bad format: think tags unpaired"),
        ("<think> t </think> <answer> Paris </answer>", True, ["paris"], 0.0,
         "cannot extract boxed answer"),
    ],
)
def test_graded_reward_gives_partial_credit(response, eos, truth, score, reason) -> None:
    """The named alternative: correctness counts even in a broken format, format even when
    wrong; the protocol's rewards give 0 to both."""
    got = rewards.get_reward_fn("graded")(response, truth, complete=eos)
    assert (got.score, got.reason) == (score, reason)
    if score in (0.8, 0.1):
        assert rewards.reward_f1(response, truth, complete=eos).score == 0.0


# --- what the reward found: the facts beside the score ------------------------------------


@pytest.mark.parametrize("name", ["v1", "f1", "graded"])
@pytest.mark.parametrize(
    ("response", "eos", "facts"),
    [  # (answered, correct, format_ok, complete)
        (answer(), True, (True, True, True, True)),
        (answer("\\boxed{Lyon}"), True, (True, False, True, True)),
        (answer(), False, (True, True, True, False)),
        ("<answer> \\boxed{Paris} </answer>", True, (True, True, False, True)),
        (answer("Paris"), True, (False, False, False, True)),  # no box: a format problem too
        ("no tags at all", False, (False, False, False, False)),
    ],
)
def test_every_reward_says_what_it_found(name, response, eos, facts) -> None:
    r = get_reward_fn(name)(response, ["Paris"], complete=eos)
    assert (r.answered, r.correct, r.format_ok, r.complete) == facts
    assert r.valid == (r.answered and r.format_ok and r.complete)
    # full marks are exactly the "correct" reason, for every reward
    assert r.correct_and_valid == (r.reason == "correct")


def test_correct_follows_each_rewards_own_rule() -> None:
    box = answer("\\boxed{the Paris}")  # equal after normalisation, not after lower-casing
    assert not reward_v1(box, "Paris", complete=True).correct
    assert reward_f1(box, "Paris", complete=True).correct
    assert rewards.reward_graded(box, "Paris", complete=True).correct
