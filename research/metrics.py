"""Answer metrics with FlashRAG's definitions (``flashrag/evaluator/metrics.py``).

- ``em``: the normalized prediction equals a normalized golden answer (``ExactMatch``).
- ``acc``: a normalized golden answer is a substring of the normalized prediction
  (``Sub_ExactMatch``, "cover EM").
- ``f1`` / ``precision`` / ``recall``: token overlap of the normalized strings
  (``F1_Score.token_level_scores``). Each is the maximum over golden answers, taken
  separately for each of the three (as FlashRAG does). A pair where either side normalizes
  to ``yes`` / ``no`` / ``noanswer`` and the two differ scores 0.

Golden answers may be one string or a sequence of strings (any form :func:`golden_list`
reads); a missing prediction (None) counts as the empty string.

>>> compute_metrics("The Zhou dynasty", ["Zhou dynasty", "Zhou"])
{'em': 1.0, 'acc': 1.0, 'f1': 1.0, 'precision': 1.0, 'recall': 1.0}
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

METRIC_NAMES = ("em", "acc", "f1", "precision", "recall")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_SPECIAL_ANSWERS = ("yes", "no", "noanswer")

Golden = str | Sequence[str]


def normalize_answer(s: str) -> str:
    """SQuAD normalization: lower-case, drop punctuation, drop a/an/the, fold whitespace.

    >>> normalize_answer("The  Zhou-Dynasty, an era!")
    'zhoudynasty era'
    """
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def golden_list(golden_answers: object) -> list[str]:
    """The golden answers as a list of strings, whichever form they come in: one string (a
    one-element list), a list or tuple, a numpy array (``tolist``; parquet list columns read
    back as arrays), or a ``{"target": ...}`` mapping of any of these. Raises ``ValueError``
    for anything else.

    >>> golden_list("Paris")
    ['Paris']
    >>> golden_list({"target": ("Paris", "Lyon")})
    ['Paris', 'Lyon']
    """
    if isinstance(golden_answers, str):
        return [golden_answers]
    if isinstance(golden_answers, Mapping) and "target" in golden_answers:
        return golden_list(golden_answers["target"])
    if hasattr(golden_answers, "tolist"):
        return golden_list(golden_answers.tolist())
    if isinstance(golden_answers, Sequence) and not isinstance(golden_answers,
                                                               bytes | bytearray):
        return [str(answer) for answer in golden_answers]
    raise ValueError("golden answers must be a string, a list of strings or "
                     f"{{'target': answers}}, got {type(golden_answers).__name__}")


def em(prediction: str | None, golden_answers: Golden) -> float:
    """1.0 if the normalized prediction equals any normalized golden answer, else 0.0.

    >>> em("the Eiffel Tower", ["Eiffel tower", "Tour Eiffel"])
    1.0
    """
    pred = normalize_answer(prediction or "")
    return float(any(normalize_answer(g) == pred for g in golden_list(golden_answers)))


def acc(prediction: str | None, golden_answers: Golden) -> float:
    """1.0 if any normalized golden answer is contained in the normalized prediction.

    >>> acc("It is the Eiffel Tower in Paris", "Eiffel Tower")
    1.0
    """
    pred = normalize_answer(prediction or "")
    return float(any(normalize_answer(g) in pred for g in golden_list(golden_answers)))


def _pair_scores(pred: str, gold: str) -> tuple[float, float, float] | None:
    """(f1, precision, recall) of two normalized strings, or None when they score 0."""
    if (pred in _SPECIAL_ANSWERS or gold in _SPECIAL_ANSWERS) and pred != gold:
        return None
    pred_tokens, gold_tokens = pred.split(), gold.split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return None
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


def token_scores(prediction: str | None, golden_answers: Golden) -> dict[str, float]:
    """Token-level ``f1``, ``precision`` and ``recall``, each maxed over golden answers.

    >>> token_scores("Barack Obama", "Obama")
    {'f1': 0.6666666666666666, 'precision': 0.5, 'recall': 1.0}
    """
    best = {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    pred = normalize_answer(prediction or "")
    for gold in golden_list(golden_answers):
        scores = _pair_scores(pred, normalize_answer(gold))
        if scores is None:
            continue
        for key, value in zip(("f1", "precision", "recall"), scores, strict=True):
            best[key] = max(best[key], value)
    return best


def f1(prediction: str | None, golden_answers: Golden) -> float:
    """Token-level F1, max over golden answers.

    >>> f1("yes", "no")
    0.0
    """
    return token_scores(prediction, golden_answers)["f1"]


def precision(prediction: str | None, golden_answers: Golden) -> float:
    """Token-level precision, max over golden answers.

    >>> precision("Barack Obama", "Obama")
    0.5
    """
    return token_scores(prediction, golden_answers)["precision"]


def recall(prediction: str | None, golden_answers: Golden) -> float:
    """Token-level recall, max over golden answers.

    >>> recall("Barack Obama", "Obama")
    1.0
    """
    return token_scores(prediction, golden_answers)["recall"]


def compute_metrics(prediction: str | None, golden_answers: Golden) -> dict[str, float]:
    """All metrics of :data:`METRIC_NAMES` for one prediction.

    >>> compute_metrics("no", ["No."])["em"]
    1.0
    """
    return {
        "em": em(prediction, golden_answers),
        "acc": acc(prediction, golden_answers),
        **token_scores(prediction, golden_answers),
    }


def average_metrics(per_item: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over the items that have it; ``{}`` for no items.

    >>> average_metrics([{"em": 1.0, "f1": 1.0}, {"em": 0.0, "f1": 0.5}])
    {'em': 0.5, 'f1': 0.75}
    """
    totals: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for item in per_item:
        for key, value in item.items():
            totals[key] += float(value)
            counts[key] += 1
    return {key: totals[key] / counts[key] for key in totals}


def corpus_metrics(
    predictions: Sequence[str | None], golden_answers: Sequence[Golden]
) -> dict[str, float]:
    """Average :func:`compute_metrics` over a data set; lengths must match.

    >>> corpus_metrics(["Paris", "Lyon"], [["Paris"], ["Marseille"]])["em"]
    0.5
    """
    if len(predictions) != len(golden_answers):
        raise ValueError(
            f"{len(predictions)} predictions but {len(golden_answers)} golden answer lists; "
            "pass one golden list per prediction"
        )
    pairs = zip(predictions, golden_answers, strict=True)
    return average_metrics(compute_metrics(p, g) for p, g in pairs)
