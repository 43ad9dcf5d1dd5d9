"""HTML for notebooks: what Jupyter shows for seedbed's objects (their `_repr_html_`).

Every output is self-contained and works offline: SVG and tables written here, inline
styles (a notebook may drop `<style>` blocks, and a page-wide one would restyle the
notebook), no script, no link to anything. Token text comes from a model or a run
folder, so it is untrusted: everything shown is escaped (`esc`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

from seedbed.report import esc, fmt

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif"  # single quotes: it goes in style="…"
MONO = "ui-monospace, Menlo, Consolas, 'DejaVu Sans Mono', monospace"
INK, MUTED, RULE, NAN = "#1d1d1f", "#5f6368", "#e2e2e2", "#d9d9d9"
BLUE, RED, WHITE = (31, 95, 168), (179, 38, 30), (255, 255, 255)
MAX_CELLS = 96  # rows and columns drawn at most; a bigger matrix shows its first MAX_CELLS of each, and says so
BLANK = 0.01  # cells this close to the scale's white are left out of the SVG (most of an attention pattern)
LABEL_CHARS = 12  # token labels longer than this are cut, with "…"


def box(title: str, body: str, note: str = "") -> str:
    """The frame of every output: a title (escaped here), a body (already HTML), an optional note (escaped)."""
    style = (f"font:13px/1.45 {FONT};color:{INK};background:#fff;border:1px solid {RULE};border-radius:6px;"
             "padding:10px 12px;margin:4px 0;max-width:100%;overflow-x:auto")
    foot = f'<div style="color:{MUTED};font-size:12px;margin-top:6px">{esc(note)}</div>' if note else ""
    return f'<div class="seedbed" style="{style}"><div style="font-weight:600;margin-bottom:6px">{esc(title)}</div>{body}{foot}</div>'


def at(run: str | None, step: int | None) -> str:
    """" — RUN, step N" for a title (either part may be unknown); "" when neither is known."""
    parts = [p for p in (run, f"step {step:,}" if step is not None else None) if p]
    return " — " + ", ".join(parts) if parts else ""


def _shade(v: float, lo: float, hi: float) -> tuple[tuple[int, int, int], float]:
    """The colour a finite value moves towards, and how far (0: white, 1: full)."""
    if lo < 0:
        t = max(-1.0, min(1.0, v / (max(-lo, hi) or 1.0)))
        return (RED, t) if t >= 0 else (BLUE, -t)
    return BLUE, max(0.0, min(1.0, (v - lo) / ((hi - lo) or 1.0)))


def colour(v: float, lo: float, hi: float) -> str:
    """A cell's fill: white → blue from lo to hi when lo >= 0; blue ← white → red around 0 when lo < 0; grey for NaN."""
    if not math.isfinite(v):
        return NAN
    end, t = _shade(v, lo, hi)
    r, g, b = (round(w + (e - w) * t) for w, e in zip(WHITE, end))
    return f"#{r:02x}{g:02x}{b:02x}"


def ink_on(fill: str) -> str:
    """Text colour readable on `fill`: white on dark cells."""
    r, g, b = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
    return "#fff" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else INK


def token_label(s: str) -> str:
    """A token as a short, visible label: whitespace and control characters spelt out, long ones cut."""
    s = str(s)
    if not s:
        return "·"
    if s.isspace() or not s.isprintable():
        s = repr(s)[1:-1]
    return s if len(s) <= LABEL_CHARS else s[: LABEL_CHARS - 1] + "…"


def number(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if math.isfinite(v) else "–"


def heatmap(values: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str], lo: float, hi: float,
            hover: Callable[[int, int, float], str] | None = None, cell: int = 14) -> str:
    """A matrix as inline SVG: one <rect> per cell (its value on hover), row labels left, column labels on top.

    `hover(i, j, v)` gives a cell's tooltip (plain text, escaped here). Cells within BLANK of white are
    not drawn (an attention pattern is mostly zeros: this keeps the output small). Only the first
    MAX_CELLS rows and columns are drawn; the caller's note should say so when it cuts (`cut_note`).
    """
    rows, cols = [token_label(r) for r in rows[:MAX_CELLS]], [token_label(c) for c in cols[:MAX_CELLS]]
    char = 7  # px per character at font-size 11, roughly
    left = char * max((len(r) for r in rows), default=1) + 8
    top = char * max((len(c) for c in cols), default=1) + 8
    w, h = left + cell * len(cols) + 2, top + cell * len(rows) + 2
    head = (f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
            f'style="display:block;font-family:{esc(MONO)};font-size:11px" aria-label="heat map">')
    out = [head]
    for j, c in enumerate(cols):
        x = left + cell * j + cell / 2 + 4
        out.append(f'<text x="{x:.1f}" y="{top - 4}" transform="rotate(-90 {x:.1f} {top - 4})" fill="{MUTED}">{esc(c)}</text>')
    for i, r in enumerate(rows):
        y = top + cell * i
        out.append(f'<text x="{left - 4}" y="{y + cell - 3}" text-anchor="end" fill="{MUTED}">{esc(r)}</text>')
        for j in range(len(cols)):
            v = float(values[i][j])
            if math.isfinite(v) and _shade(v, lo, hi)[1] < BLANK:
                continue
            tip = hover(i, j, v) if hover else f"{r}, {cols[j]}: {number(v, 3)}"
            out.append(f'<rect x="{left + cell * j}" y="{y}" width="{cell}" height="{cell}" fill="{colour(v, lo, hi)}">'
                       f"<title>{esc(tip)}</title></rect>")
    out.append(f'<rect x="{left}" y="{top}" width="{cell * len(cols)}" height="{cell * len(rows)}" fill="none" stroke="{RULE}"/>')
    return "".join(out) + "</svg>"


def scale_bar(lo: float, hi: float, what: str = "") -> str:
    """The colour scale: eleven swatches from lo to hi, with both ends written."""
    steps = [lo + (hi - lo) * k / 10 for k in range(11)]
    swatches = "".join(f'<span style="display:inline-block;width:12px;height:10px;background:{colour(v, lo, hi)}"></span>' for v in steps)
    label = f" {esc(what)}" if what else ""
    return (f'<div style="color:{MUTED};font-size:11px;margin-top:4px">{esc(fmt(lo))} '
            f'<span style="border:1px solid {RULE};display:inline-flex">{swatches}</span> {esc(fmt(hi))}{label}</div>')


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], numeric: Collection[int] = ()) -> str:
    """A plain table with inline styles; column names are escaped here, cells are HTML already (escape them first)."""
    cell = f"padding:3px 8px;border-bottom:1px solid {RULE};vertical-align:top"
    align = lambda i: ";text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap" if i in numeric else ";text-align:left"
    head = "".join(f'<th style="{cell}{align(i)};font-weight:600">{esc(c)}</th>' for i, c in enumerate(columns))
    body = "".join("<tr>" + "".join(f'<td style="{cell}{align(i)}">{c}</td>' for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table style="border-collapse:collapse;font-size:12px;margin:2px 0"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def shaded(v: float, lo: float, hi: float, bold: bool = False) -> str:
    """A table cell's content: the number on its colour (for score tables)."""
    fill = colour(v, lo, hi)
    weight = "font-weight:700;" if bold else ""
    return f'<span style="{weight}display:inline-block;min-width:3em;padding:0 4px;background:{fill};color:{ink_on(fill)}">{number(v)}</span>'


def facts(pairs: Sequence[tuple[str, object]]) -> str:
    """Name: value lines (both escaped), for the few facts about an object."""
    return "".join(f'<div><span style="color:{MUTED}">{esc(k)}:</span> {esc(v)}</div>' for k, v in pairs)


def cut_note(n_rows: int, n_cols: int) -> str:
    """What `heatmap` leaves out of a big matrix, in words ("" when it draws all of it)."""
    if n_rows <= MAX_CELLS and n_cols <= MAX_CELLS:
        return ""
    return f"showing the first {min(n_rows, MAX_CELLS)} of {n_rows} rows and {min(n_cols, MAX_CELLS)} of {n_cols} columns. "
