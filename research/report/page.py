"""The report's HTML shell: one page with its own CSS, tables and the small pieces the training
and evaluation sections share. Nothing on the page is fetched: no script, font or image URL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from pathlib import Path

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d1f23;
 background:#fff;max-width:1500px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666;margin:0 0 14px}
.grid{display:flex;flex-wrap:wrap;gap:10px}
svg{background:#fafbfc;border:1px solid #e3e5e8;border-radius:4px}
svg .ct{font-size:10px;font-weight:600;fill:#333}svg .tk{font-size:9px;fill:#777}
svg .ax{stroke:#bbb;fill:none}
.legend{display:flex;flex-wrap:wrap;gap:12px;margin:6px 0;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #e1e3e6;padding:4px 7px;vertical-align:top;text-align:left}
th{background:#f3f4f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.resp{white-space:pre-wrap;font:12px/1.5 ui-monospace,Menlo,Consolas,monospace;max-width:760px;
 max-height:340px;overflow:auto}
.tag{font-weight:700;border-radius:3px;padding:0 1px}
.t-think{color:#6b4fbb}.t-search{color:#0b6bcb;background:#e6f1fc}
.t-result{color:#7a5a00}.t-answer{color:#127a3a;background:#e5f6eb}.t-boxed{color:#b4233a}
.masked{background:repeating-linear-gradient(135deg,#fff4d6 0 6px,#fdebb8 6px 12px);
 color:#6d5a2a;border:1px dashed #d8b24a;border-radius:3px}
.masked.masked:not(.inserted){background:#eee;border-color:#aaa}
.key span{margin-right:14px}.ok{color:#127a3a}.bad{color:#b4233a}
code{font-size:12px;background:#f3f4f6;padding:0 3px;border-radius:3px}
details summary{cursor:pointer;color:#333}
summary.h{font-size:17px;font-weight:600;margin:28px 0 8px}
"""

KEY = ('<p class="key"><span class="tag t-think">&lt;think&gt;</span>'
       '<span class="tag t-search">&lt;search&gt;</span>'
       '<span class="tag t-answer">&lt;answer&gt;</span>'
       '<span class="tag t-boxed">\\boxed{}</span>'
       '<span class="masked inserted">inserted result tokens (retrieved, not generated): '
       "masked out of the loss</span>"
       "</p>")


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file (none when it is missing; a line cut by a crash ends it)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def cell(value) -> str:
    """A table cell: numbers right-aligned to 4 significant digits, lists joined."""
    if isinstance(value, bool) or value is None:
        return f"<td>{escape(str(value))}</td>" if value is not None else "<td></td>"
    if isinstance(value, float | int):
        return f'<td class="n">{value:.4g}</td>'
    if isinstance(value, list | tuple):
        return "<td>" + "<br>".join(escape(str(v)) for v in value) + "</td>"
    return f"<td>{escape(str(value))}</td>"


def table(head: Sequence[str], rows: Sequence[Sequence], cls: str = "") -> str:
    """An HTML table; cells are raw HTML when they start with ``<td``, else :func:`cell`."""
    out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head)
           + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(v if isinstance(v, str) and v.startswith("<td") else cell(v)
                                    for v in row) + "</tr>")
    return "\n".join([*out, "</table>"])


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>", f'<p class="sub">{escape(subtitle)}</p>',
        *sections, "</body></html>", ""])
