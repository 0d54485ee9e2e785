"""When and how the model searches, by question type: the monitors of the multi-hop recipe.

A *sample* is one response with what it did and how it scored, as a mapping:
``type`` (the question's ``metadata.type``: ``one-hop``, ``bridge``, ...; None when the set
has none), ``queries`` (its search queries, in order), ``correct`` (the reward's verdict or the
evaluation's exact match) and, for bridge questions, ``bridge_entity`` (what the first hop
finds: the country whose capital is Port-au-Prince is ``Haiti``).

:func:`behaviour` turns a step's (or a validation's) samples into flat numbers, keyed
``type/<type>/searches`` (searches per answer), ``type/<type>/exact`` (exact share) and
``type/<type>/samples`` for every type present, plus ``bridge/entity_in_second_query`` (the
share of bridge samples whose second query names the bridge entity: the chain a bridge
question takes) and ``repeated_query_share`` (queries that repeat an earlier query of the
same response, over all queries).

>>> samples = [
...     {"type": "bridge", "queries": ["capital is Port-au-Prince", "Haiti population"],
...      "correct": True, "bridge_entity": "Haiti"},
...     {"type": "bridge", "queries": ["population of the country whose capital is X"],
...      "correct": False, "bridge_entity": "Haiti"},
...     {"type": "one-hop", "queries": ["Aruba population", "Aruba population"],
...      "correct": True}]
>>> m = behaviour(samples)
>>> m["type/bridge/searches"], m["type/bridge/exact"], m["type/one-hop/searches"]
(1.5, 0.5, 2.0)
>>> m["bridge/entity_in_second_query"], m["repeated_query_share"]
(0.5, 0.2)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from research.metrics import normalize_answer

UNTYPED = "untyped"
# how every key :func:`behaviour` writes begins (figures and reports find them by these)
KEY_PREFIXES = ("type/", "bridge/", "repeated_query_share")


def names_entity(query: str, entity: str | None) -> bool:
    """Whether ``query`` names ``entity`` (normalised words, as a whole-word run).

    >>> names_entity("life expectancy at birth in Libya", "Libya")
    True
    >>> names_entity("Nigeria population", "Niger")
    False
    """
    if not entity:
        return False
    needle, hay = normalize_answer(entity), normalize_answer(query)
    return bool(needle) and f" {needle} " in f" {hay} "


def repeated_queries(queries: Iterable[str]) -> int:
    """How many queries repeat an earlier one of the same response (normalised).

    >>> repeated_queries(["Aruba population", "aruba  population!", "Aruba area"])
    1
    """
    seen, repeats = set(), 0
    for q in queries:
        key = normalize_answer(q)
        repeats += key in seen
        seen.add(key)
    return repeats


def behaviour(samples: Iterable[Mapping], prefix: str = "") -> dict[str, float]:
    """The monitors of the module docstring over ``samples``, each key after ``prefix``."""
    by_type: dict[str, list[Mapping]] = {}
    queries = repeats = 0
    for s in samples:
        by_type.setdefault(s.get("type") or UNTYPED, []).append(s)
        queries += len(s["queries"])
        repeats += repeated_queries(s["queries"])
    out: dict[str, float] = {}
    for kind, group in sorted(by_type.items()):
        n = len(group)
        out[f"{prefix}type/{kind}/samples"] = n
        out[f"{prefix}type/{kind}/searches"] = sum(len(s["queries"]) for s in group) / n
        out[f"{prefix}type/{kind}/exact"] = sum(bool(s["correct"]) for s in group) / n
    bridge = by_type.get("bridge", [])
    if bridge:
        out[f"{prefix}bridge/entity_in_second_query"] = sum(
            len(s["queries"]) > 1 and names_entity(s["queries"][1], s.get("bridge_entity"))
            for s in bridge) / len(bridge)
    if queries:
        out[f"{prefix}repeated_query_share"] = repeats / queries
    return out


def question_facts(item: Mapping) -> dict[str, str | None]:
    """``type`` and ``bridge_entity`` of a question row (its ``metadata``), for the samples.

    >>> question_facts({"question": "q", "metadata": {"type": "bridge", "bridge_entity": "Chad"}})
    {'type': 'bridge', 'bridge_entity': 'Chad'}
    >>> question_facts({"question": "q"})
    {'type': None, 'bridge_entity': None}
    """
    meta = item.get("metadata") or {}
    return {"type": meta.get("type"), "bridge_entity": meta.get("bridge_entity")}
