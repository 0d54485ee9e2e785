"""The project's one question loader: an embedded set, a rows parquet or a FlashRAG jsonl.

Every reader of questions (``research rollout``, both training engines, the evaluation, the
quickstart, the benchmarks) calls :func:`load_questions`; what it gives back depends on the
source:

- an embedded set name (:data:`research.data.embedded.EMBEDDED`): the rows of
  ``data/NAME/SPLIT.jsonl`` as committed (``id``, ``question``, ``golden_answers``,
  ``metadata``);
- a ``.parquet`` of the project's rows (:mod:`research.data.rows`): ``id`` (from
  ``extra_info``), ``question`` and ``golden_answers`` (the ground truth as a list);
- a FlashRAG ``.jsonl``: its validated records
  (:func:`research.data.flashrag.load_flashrag_jsonl`), ``metadata`` included when present.

>>> rows = load_questions("factbook-hop", "dev", limit=2)
>>> len(rows), sorted(rows[0])
(2, ['golden_answers', 'id', 'metadata', 'question'])
"""

from __future__ import annotations

import os
import random

from research.data.embedded import read_split
from research.data.flashrag import load_flashrag_jsonl
from research.data.rows import golden_answers, read_rows


def load_questions(source: str | os.PathLike, split: str = "dev", limit: int | None = None,
                   kind: str | None = None, seed: int | None = None) -> list[dict]:
    """``{"id", "question", "golden_answers", ...}`` of ``source`` (see the module docstring);
    ``split`` picks an embedded set's split; with ``kind``, only the questions whose
    ``metadata.type`` is ``kind``; then the first ``limit`` (None or 0: all), or with
    ``seed`` ``limit`` questions drawn at random by that seed (the same draw every time), kept
    in the file's order. A file ordered by country gives its first N from a few countries
    only; the draw spreads them over the set.

    >>> [q["id"][:9] for q in load_questions("factbook-facts", "dev", 3, "bridge", seed=0)]
    ['ffb-gy-in', 'ffb-se-ca', 'ffb-tx-hi']
    """
    source = os.fspath(source)
    if source.endswith(".parquet"):
        items = [{"id": r["extra_info"].get("id"), "question": r["question"],
                  "golden_answers": golden_answers(r)} for r in read_rows(source)]
    elif source.endswith(".jsonl"):
        items = list(load_flashrag_jsonl(source))
    else:
        items = read_split(source, split)
    if kind is not None:
        items = [it for it in items if (it.get("metadata") or {}).get("type") == kind]
    if limit and seed is not None and limit < len(items):
        return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]
    return items[:limit] if limit else items
