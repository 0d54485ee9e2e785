"""A trajectory as HTML: the protocol's tags coloured and the tokens outside the loss marked.

With the run's tokenizer the response is cut where the rollout's own marks change
(``inserted`` and ``loss_mask``, one entry per response token) and each piece is decoded from
its token ids, so the marked span is exactly what the loss skipped. Without a tokenizer the
recorded ``text`` is used and each ``<result> ... </result>`` block, which only the rollout
writes, is marked as inserted (:func:`text_pieces`).

>>> text_pieces(" <think> a </think> <search> q </search> <result> doc </result>")
[(' <think> a </think> <search> q </search>', 'model'), (' <result> doc </result>', 'inserted')]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape

from research.protocol import RESULT_END, RESULT_START

TAG = re.compile(r"</?(think|search|result|answer)>|\\boxed\{[^{}]*\}")
RESULT_BLOCK = re.compile(rf"\s*{re.escape(RESULT_START)}.*?(?:{re.escape(RESULT_END)}|$)",
                          re.DOTALL)
TITLES = {"inserted": "inserted by the rollout (retrieved documents): loss mask 0, no gradient",
          "masked": "outside the loss (loss mask 0)"}


def token_pieces(ids: Sequence[int], loss_mask: Sequence[int], inserted: Sequence[bool],
                 decode) -> list[tuple[str, str]]:
    """``[(text, kind)]`` with kind ``model`` (trained), ``inserted`` or ``masked``; each run
    of tokens with one kind is decoded together (``decode(ids) -> str``)."""
    kinds = ["inserted" if (i < len(inserted) and inserted[i]) else
             "masked" if (i < len(loss_mask) and not loss_mask[i]) else "model"
             for i in range(len(ids))]
    pieces: list[tuple[str, str]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or kinds[i] != kinds[start]:
            pieces.append((decode(list(ids[start:i])), kinds[start]))
            start = i
    return pieces


def text_pieces(text: str) -> list[tuple[str, str]]:
    """``[(text, kind)]`` from the text alone: result blocks are ``inserted``."""
    pieces, pos = [], 0
    for m in RESULT_BLOCK.finditer(text):
        if m.start() > pos:
            pieces.append((text[pos:m.start()], "model"))
        pieces.append((m.group(0), "inserted"))
        pos = m.end()
    if pos < len(text):
        pieces.append((text[pos:], "model"))
    return pieces


def colour_tags(text: str) -> str:
    """Escaped ``text`` with each tag (and ``\\boxed{...}``) in a ``<span class="tag t-NAME">``."""
    out, pos = [], 0
    for m in TAG.finditer(text):
        out.append(escape(text[pos:m.start()]))
        name = m.group(1) or "boxed"
        out.append(f'<span class="tag t-{name}">{escape(m.group(0))}</span>')
        pos = m.end()
    out.append(escape(text[pos:]))
    return "".join(out)


def pieces_html(pieces: Sequence[tuple[str, str]]) -> str:
    """The response as one ``<div class="resp">``; masked pieces are ``<span class="masked
    KIND">`` with a tooltip saying why."""
    parts = []
    for text, kind in pieces:
        body = colour_tags(text)
        parts.append(body if kind == "model" else
                     f'<span class="masked {kind}" title="{TITLES[kind]}">{body}</span>')
    return '<div class="resp">' + "".join(parts) + "</div>"


def record_pieces(record: dict, decode) -> tuple[list[tuple[str, str]], str]:
    """A rollout record's pieces and their source: ``token ids`` when ``decode`` is given and
    the record has its ids and marks, else ``text``."""
    ids = record.get("response_ids")
    if decode is not None and ids and "loss_mask" in record:
        return token_pieces(ids, record["loss_mask"], record.get("inserted") or [], decode), (
            "token ids")
    return text_pieces(record.get("text") or record.get("response") or ""), "text"
