"""Tests of the FlashRAG answer metrics: normalization, em, acc, token F1/precision/recall."""

from __future__ import annotations

import string

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from research.metrics import (
    METRIC_NAMES,
    acc,
    average_metrics,
    compute_metrics,
    corpus_metrics,
    em,
    f1,
    golden_list,
    normalize_answer,
    precision,
    recall,
    token_scores,
)

# --- normalization -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Zhou Dynasty", "zhou dynasty"),
        ("  King   Wu\tof\nZhou  ", "king wu of zhou"),
        ("A cat, an apple & the end.", "cat apple end"),
        ("Theory", "theory"),
        ("another", "another"),
        ("a-the", "athe"),
        ("U.S.A.", "usa"),
        ("O'Neil", "oneil"),
        ("the the a an", ""),
        ("", ""),
        ("¿Qué?", "¿qué"),
        ("1,000", "1000"),
    ],
)
def test_normalize_answer(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


@given(st.text())
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize_answer(text)
    assert normalize_answer(once) == once


@given(st.text())
def test_normalized_form_has_no_ascii_punctuation_or_stray_spaces(text: str) -> None:
    normalized = normalize_answer(text)
    assert not set(normalized) & set(string.punctuation)
    assert normalized == normalized.strip()
    assert "  " not in normalized
    assert not {"a", "an", "the"} & set(normalized.split())


@given(st.text(), st.sampled_from(["", "!", ".", " the", "  ", "?!"]))
def test_normalize_ignores_case_punctuation_and_articles(text: str, noise: str) -> None:
    assert normalize_answer(text.upper() + noise) == normalize_answer(text.upper())


# --- em and acc ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "golden", "em_score", "acc_score"),
    [
        ("Paris", "paris", 1.0, 1.0),
        ("The Paris!", ["Lyon", "paris"], 1.0, 1.0),
        ("Paris, France", "Paris", 0.0, 1.0),
        ("Paris", "Paris, France", 0.0, 0.0),
        ("Parisian", "Paris", 0.0, 1.0),
        ("Lyon", ["Paris", "Marseille"], 0.0, 0.0),
        ("", "Paris", 0.0, 0.0),
        (None, "Paris", 0.0, 0.0),
        ("", "", 1.0, 1.0),
        ("anything", "the", 0.0, 1.0),
    ],
)
def test_em_and_acc(prediction, golden, em_score: float, acc_score: float) -> None:
    assert em(prediction, golden) == em_score
    assert acc(prediction, golden) == acc_score


@given(st.text(), st.lists(st.text(), max_size=3))
def test_em_implies_acc(prediction: str, golden: list[str]) -> None:
    if em(prediction, golden):
        assert acc(prediction, golden) == 1.0


@given(st.text(min_size=1))
def test_prediction_matches_itself(text: str) -> None:
    assert em(text, [text]) == 1.0
    assert acc(text, text) == 1.0
    if normalize_answer(text):
        assert token_scores(text, text) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}


# --- token F1 / precision / recall, hand computed ------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "golden", "expected"),
    [
        # 1 common token of 2 predicted and 1 golden: p=1/2, r=1, f1=2*(1/2)/(3/2)=2/3
        ("Barack Obama", "Obama", (2 / 3, 1 / 2, 1.0)),
        # "king wu" vs "king wu of zhou": common 2; p=2/2, r=2/4, f1=2*0.5/1.5=2/3
        ("King Wu", "King Wu of Zhou", (2 / 3, 1.0, 1 / 2)),
        # "zhou zhou dynasty" vs "zhou": common 1; p=1/3, r=1, f1=2*(1/3)/(4/3)=1/2
        ("Zhou zhou dynasty", "Zhou", (1 / 2, 1 / 3, 1.0)),
        # repeated tokens count with multiplicity: "a b b" -> "b b" vs "b b c": common 2;
        # p=2/2, r=2/3, f1=2*(2/3)/(5/3)=4/5
        ("a b b", "b b c", (4 / 5, 1.0, 2 / 3)),
        # articles and punctuation do not count: "the king, wu" -> "king wu"
        ("the king, wu", "King Wu.", (1.0, 1.0, 1.0)),
        ("Lyon", "Paris", (0.0, 0.0, 0.0)),
        ("", "Paris", (0.0, 0.0, 0.0)),
        (None, "Paris", (0.0, 0.0, 0.0)),
        ("the", "the", (0.0, 0.0, 0.0)),
    ],
)
def test_token_scores(prediction, golden, expected: tuple[float, float, float]) -> None:
    scores = token_scores(prediction, golden)
    assert (scores["f1"], scores["precision"], scores["recall"]) == pytest.approx(expected)
    assert f1(prediction, golden) == pytest.approx(expected[0])
    assert precision(prediction, golden) == pytest.approx(expected[1])
    assert recall(prediction, golden) == pytest.approx(expected[2])


def test_token_scores_max_each_metric_separately() -> None:
    # "x y" vs "x": p=1/2, r=1, f1=2/3; "x y" vs "x y z w": p=1, r=1/2, f1=2/3
    scores = token_scores("x y", ["x", "x y z w"])
    assert scores == pytest.approx({"f1": 2 / 3, "precision": 1.0, "recall": 1.0})


@pytest.mark.parametrize(
    ("prediction", "golden", "f1_score"),
    [
        ("yes", "no", 0.0),
        ("yes", "yes indeed", 0.0),
        ("no way", "no", 0.0),
        ("noanswer", "no answer", 0.0),
        ("Yes.", "yes", 1.0),
        ("No", ["yes", "no"], 1.0),
        ("yes", ["yes sir", "yes"], 1.0),
        ("no answer", "no answer", 1.0),
    ],
)
def test_yes_no_mismatch_scores_zero(prediction: str, golden, f1_score: float) -> None:
    assert f1(prediction, golden) == f1_score


@given(st.text(), st.lists(st.text(), min_size=1, max_size=3))
def test_token_scores_are_bounded_and_consistent(prediction: str, golden: list[str]) -> None:
    scores = token_scores(prediction, golden)
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert scores["f1"] <= max(scores["precision"], scores["recall"]) + 1e-12
    if em(prediction, golden) and normalize_answer(prediction):
        assert scores["f1"] == 1.0


@given(st.text(), st.text(), st.text())
def test_more_golden_answers_never_lower_a_score(prediction: str, first: str, extra: str) -> None:
    one, two = compute_metrics(prediction, [first]), compute_metrics(prediction, [first, extra])
    assert all(two[name] >= one[name] for name in METRIC_NAMES)


# --- aggregates ----------------------------------------------------------------------------


def test_golden_list() -> None:
    assert golden_list("Paris") == ["Paris"]
    assert golden_list(("Paris", "Lyon")) == ["Paris", "Lyon"]
    assert golden_list([]) == []
    assert golden_list(np.array(["Paris", "Lyon"], dtype=object)) == ["Paris", "Lyon"]
    assert golden_list({"target": np.array(["Paris"])}) == ["Paris"]
    for bad in (3, None, b"Paris", {"answers": ["Paris"]}, {"Paris"}):
        with pytest.raises(ValueError, match="golden answers must be"):
            golden_list(bad)


def test_compute_metrics_keys() -> None:
    result = compute_metrics("Barack Obama", ["Obama"])
    assert tuple(result) == METRIC_NAMES
    assert result == pytest.approx(
        {"em": 0.0, "acc": 1.0, "f1": 2 / 3, "precision": 0.5, "recall": 1.0}
    )


def test_corpus_metrics_averages_items() -> None:
    result = corpus_metrics(
        ["Paris", "Barack Obama", None, "yes"],
        [["paris"], "Obama", ["Lyon"], ["no"]],
    )
    assert result == pytest.approx(
        {
            "em": 1 / 4,
            "acc": 2 / 4,
            "f1": (1.0 + 2 / 3) / 4,
            "precision": (1.0 + 0.5) / 4,
            "recall": (1.0 + 1.0) / 4,
        }
    )


def test_corpus_metrics_length_mismatch() -> None:
    with pytest.raises(ValueError, match="one golden list per prediction"):
        corpus_metrics(["a", "b"], [["a"]])


def test_average_metrics() -> None:
    assert average_metrics([]) == {}
    assert average_metrics(iter([{"em": 1.0}, {"em": 0.0}, {"em": 0.5}])) == {"em": 0.5}
    # keys missing from some items are averaged over the items that have them
    assert average_metrics([{"em": 1.0, "f1": 0.5}, {"em": 0.0}]) == {"em": 0.5, "f1": 0.5}
