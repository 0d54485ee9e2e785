"""Scripted policies: fixed search rules with no model, run through the same service and
scored like every method, so that a trained model's gain is reported against the simplest
rule that would score the same.

* ``one-search-rule``: search the question once, box the first number of the first result.
  On the factbook one-hop questions the answer passage is the question's top hit and its
  first number is the answer, so this rule is the ceiling a one-search policy reaches there.
* ``oracle-chain``: the retrieval ceiling of a two-hop chain. It searches the question's
  ``metadata.hop1_query`` (``capital is Port-au-Prince``), reads the bridge entity from the
  first result's title (``"Haiti: Capital"`` -> ``Haiti``), searches that entity with the
  asked attribute (the rest of ``metadata.hop2_query``: ``Haiti population``) and boxes the
  first number of that result. A one-hop question (no ``hop2_query``) gets one search with its
  ``hop1_query``. It reads the metadata a model never sees: a ceiling, not a baseline.

Both need questions whose answers are numbers (the factbook sets); on other sets they still
run and score what they score.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from research.evaluation.methods import Answer, Context, register, search, split_title

# a number as the factbook passages write them: 92,436 / 442.6 / 1-268 / 31
_NUMBER = re.compile(r"\d(?:[\d,.\-]*\d)?")


def first_number(text: str) -> str:
    """The first number of ``text`` ("" when it has none).

    >>> first_number("The population of Aruba is 112,162.")
    '112,162'
    >>> first_number("The international calling code of Antigua and Barbuda is 1-268.")
    '1-268'
    >>> first_number("no digits here")
    ''
    """
    m = _NUMBER.search(text)
    return m.group(0) if m else ""


def title_entity(contents: str) -> str:
    """The entity a factbook passage is about: its title before the colon.

    >>> title_entity('"Haiti: Capital"\\nThe capital of Haiti is Port-au-Prince.')
    'Haiti'
    """
    title, _ = split_title(contents)
    return title.strip().strip('"').partition(":")[0].strip()


def _first_text(hits) -> str:
    return split_title(hits[0].contents)[1] if hits else ""


def _boxed(answer: Answer, value: str) -> Answer:
    answer.prediction = value
    answer.response += f"<answer> \\boxed{{{value}}} </answer>"
    return answer


@register("one-search-rule")
def one_search_rule(items: Sequence[dict], ctx: Context) -> list[Answer]:
    answers = [Answer("") for _ in items]
    hits = search(ctx, [it["question"] for it in items], answers)
    return [_boxed(a, first_number(_first_text(h))) for a, h in zip(answers, hits, strict=True)]


def _second_query(item: dict, entity: str) -> str | None:
    """The second hop's query with ``entity`` in place of the true one, or None for a
    question with no second hop."""
    meta = item.get("metadata") or {}
    hop2, true_entity = meta.get("hop2_query"), meta.get("bridge_entity")
    if not hop2:
        return None
    attribute = hop2.removeprefix(true_entity).strip() if true_entity else hop2
    return f"{entity} {attribute}".strip()


@register("oracle-chain")
def oracle_chain(items: Sequence[dict], ctx: Context) -> list[Answer]:
    answers = [Answer("") for _ in items]
    first = search(ctx, [(it.get("metadata") or {}).get("hop1_query") or it["question"]
                         for it in items], answers)
    seconds = [_second_query(it, title_entity(h[0].contents) if h else "")
               for it, h in zip(items, first, strict=True)]
    chained = [i for i, q in enumerate(seconds) if q is not None]
    second = search(ctx, [seconds[i] for i in chained], [answers[i] for i in chained])
    final = dict(enumerate(first)) | dict(zip(chained, second, strict=True))
    return [_boxed(answers[i], first_number(_first_text(final[i]))) for i in range(len(items))]
