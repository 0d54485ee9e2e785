"""Inline SVG charts for the run report: a line chart of one monitor against step, and stacked
bars of the reward reasons per step. Pure string building (no plotting library), so a report
renders wherever the package is installed and its page needs no network.

>>> svg = line_chart("reward", [(1, 0.2), (2, 0.5)])
>>> svg.count("<circle"), 'data-key="reward"' in svg
(2, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 256, 128
PAD_L, PAD_R, PAD_T, PAD_B = 44, 10, 22, 24
PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2",
           "#97bbf5", "#9c6b4e", "#9498a0")


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _frame(title: str, key: str, css: str) -> list[str]:
    return [f'<svg class="{css}" data-key="{escape(key)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" role="img">',
            f"<title>{escape(title)}</title>",
            f'<text x="{PAD_L}" y="14" class="ct">{escape(title)}</text>']


def _axes(x_lo: float, x_hi: float, y_lo: float, y_hi: float) -> list[str]:
    x0, x1, y0, y1 = PAD_L, WIDTH - PAD_R, HEIGHT - PAD_B, PAD_T
    return [f'<path class="ax" d="M{x0},{y1}V{y0}H{x1}"/>',
            f'<text class="tk" x="{x0 - 4}" y="{y1 + 4}" text-anchor="end">{_fmt(y_hi)}</text>',
            f'<text class="tk" x="{x0 - 4}" y="{y0}" text-anchor="end">{_fmt(y_lo)}</text>',
            f'<text class="tk" x="{x0}" y="{y0 + 14}">{_fmt(x_lo)}</text>',
            f'<text class="tk" x="{x1}" y="{y0 + 14}" text-anchor="end">step {_fmt(x_hi)}</text>']


def line_chart(key: str, points: Sequence[tuple[float, float]], title: str | None = None,
               color: str = PALETTE[0]) -> str:
    """One monitor against step: a polyline with a ``<circle>`` per finite point (its value
    in the circle's tooltip)."""
    pts = [(float(x), float(y)) for x, y in points if math.isfinite(y)]
    out = _frame(title or key, key, "curve")
    if not pts:
        return "\n".join([*out, '<text x="50%" y="55%" class="tk">no finite values</text>',
                          "</svg>"])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    y_lo, y_hi = (0.0 if min(ys) >= 0 else min(ys)), max(ys)  # non-negative: from zero
    if y_lo == y_hi:
        y_lo, y_hi = (0.0, 1.0) if y_lo == 0 else (y_lo - abs(y_lo) / 2, y_hi + abs(y_hi) / 2)
    fx = _scale(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, PAD_L + 4,
                WIDTH - PAD_R - 4)
    fy = _scale(y_lo, y_hi, HEIGHT - PAD_B, PAD_T)
    coords = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)
    out += _axes(min(xs), max(xs), y_lo, y_hi)
    out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{coords}"/>')
    out += [f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="2.4" fill="{color}">'
            f"<title>step {_fmt(x)}: {y:.4g}</title></circle>" for x, y in pts]
    out.append("</svg>")
    return "\n".join(out)


def stacked_bars(title: str, steps: Sequence[int], counts: Sequence[dict[str, int]],
                 labels: Sequence[str]) -> str:
    """Reward reasons per step: one bar per step, a segment per reason in ``labels`` order,
    each bar's height the share of that step's samples (colours as :func:`legend`)."""
    out = _frame(title, "reasons", "bars")
    width = WIDTH * 2
    out[0] = out[0].replace(f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}"',
                            f'viewBox="0 0 {width} {HEIGHT}" width="{width}"')
    x0, x1, y0, y1 = PAD_L, width - PAD_R, HEIGHT - PAD_B, PAD_T
    slot = (x1 - x0) / max(1, len(steps))
    out.append(f'<path class="ax" d="M{x0},{y1}V{y0}H{x1}"/>')
    out += [f'<text class="tk" x="{x0 - 4}" y="{y1 + 4}" text-anchor="end">100%</text>',
            f'<text class="tk" x="{x0 - 4}" y="{y0}" text-anchor="end">0</text>']
    for i, (step, c) in enumerate(zip(steps, counts, strict=True)):
        total, top = sum(c.values()) or 1, float(y0)
        for j, label in enumerate(labels):
            h = c.get(label, 0) / total * (y0 - y1)
            if h > 0:
                top -= h
                out.append(f'<rect x="{x0 + i * slot + slot * 0.1:.1f}" y="{top:.1f}" '
                           f'width="{slot * 0.8:.1f}" height="{h:.1f}" '
                           f'fill="{PALETTE[j % len(PALETTE)]}"><title>step {step}: '
                           f"{escape(label)} {c[label]}</title></rect>")
        if len(steps) <= 30 or i % math.ceil(len(steps) / 30) == 0:
            out.append(f'<text class="tk" x="{x0 + (i + 0.5) * slot:.1f}" y="{y0 + 14}" '
                       f'text-anchor="middle">{step}</text>')
    out.append("</svg>")
    return "\n".join(out)


def legend(labels: Sequence[str]) -> str:
    """The colour key of :func:`stacked_bars`."""
    return '<div class="legend">' + "".join(
        f'<span><i style="background:{PALETTE[j % len(PALETTE)]}"></i>{escape(label)}</span>'
        for j, label in enumerate(labels)) + "</div>"
