"""The report: one HTML page that shows a trial (or a plain run) so that a reader can disagree with it.

`write_report(RUN)` reads `RUN/trial.json` (written by a trial) or, failing that, the run itself
(`run.sqlite`), and writes `RUN/report.html` and `RUN/report-main.png` (the main figure, for a
README). The page is self-contained and works offline: inline CSS, no script, figures as inline
SVG drawn by matplotlib with text as paths, so it needs no font, no network and no server.

Figures are pure data (specs of kind lines, bars, grouped-bars, heatmap, table or frames); `draw(spec)` is the one
renderer, used for both the SVG in the page and the PNG.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import textwrap
import tomllib
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import tomli_w
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from seedbed import contained
from seedbed.errors import SeedbedError
from seedbed.files import write_atomic
from seedbed.run import Run

VERDICTS = ("held", "did not hold", "inconclusive")
PALETTE = ["#1f5fa8", "#d1621b", "#2b8a3e", "#8e44ad", "#b8860b", "#c0392b", "#16a085", "#6b7280"]
SPAN_COLOURS = ["#f2c14e", "#9ecae1", "#c7e9c0", "#fdd0a2"]
HLINE_STYLES = ["--", ":", "-."]  # several thresholds on one figure: told apart by their dashes, named in the legend
BAR_COLOURS = {"highlight": PALETTE[1], "other": "#9bb3cf"}
TICK_PT = 8.0  # token labels on a heat map: never smaller than this; thinned out instead
STYLE = {
    "svg.fonttype": "path",  # text drawn as shapes: the page needs no font at all
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#8a8a8a",
    "axes.labelcolor": "#333333",
    "axes.titlesize": 10,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.6,
    "xtick.color": "#555555",
    "ytick.color": "#555555",
    "legend.frameon": False,
    "legend.fontsize": 8,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


# ── figures: spec → matplotlib Figure ────────────────────────────────────────
def draw(spec: dict, titled: bool = False) -> Figure:
    """Draw one figure spec. The page puts the title in a caption; the PNG (`titled`) carries its own."""
    kind = spec.get("kind")
    if kind not in DRAWERS:
        raise SeedbedError(f"figure {spec.get('id', '?')!r} has unknown kind {kind!r}: use one of {', '.join(DRAWERS)}")
    with matplotlib.rc_context(STYLE):
        fig = DRAWERS[kind](spec)
        if titled and spec.get("title"):
            # wrapped to the figure's width (about ten bold 10-pt characters an inch), never cut off
            fig.suptitle(textwrap.fill(_text(spec["title"]) or "", max(40, int(fig.get_figwidth() * 10))), fontsize=10, fontweight="bold")
    return fig


def _numbers(values: list) -> np.ndarray:
    """A list with nulls as an array with NaN (a gap in a line, a blank cell in a heat map)."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _lines(spec: dict) -> Figure:
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    for i, s in enumerate(spec.get("series", [])):
        y = _numbers(s.get("y", []))
        x = _numbers(s["x"]) if "x" in s else np.arange(len(y), dtype=float)
        ax.plot(x, y, label=_text(s.get("label")), color=PALETTE[i % len(PALETTE)], lw=1.6, marker="o" if len(y) <= 40 else None, ms=3)
    for i, sp in enumerate(spec.get("spans", [])):
        ax.axvspan(sp["from"], sp["to"], color=SPAN_COLOURS[i % len(SPAN_COLOURS)], alpha=0.35, lw=0, label=_text(sp.get("label")), zorder=0)
    _hlines(ax, spec)
    if spec.get("log_y"):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.5, 1, 3 read faster than 5×10⁻¹
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _minor_log_label(ax, v)))
    if spec.get("log_x"):  # model sizes, token counts: a log axis, labelled with plain numbers
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.set_xlabel(_text(spec.get("x_label", "")))
    ax.set_ylabel(_text(spec.get("y_label", "")))
    _legend(ax)
    return fig


def _minor_log_label(ax, v: float) -> str:
    """Between powers of ten, label 2, 3 and 5 times one, when the axis spans at most two decades."""
    lo, hi = ax.get_ylim()
    if v <= 0 or lo <= 0 or hi / lo > 100:
        return ""
    mantissa = round(v / 10 ** math.floor(math.log10(v)), 6)
    return f"{v:g}" if mantissa in (2, 3, 5) else ""


def _bars(spec: dict) -> Figure:
    bars = spec.get("bars", [])
    labels = [_text(b.get("label", "")) for b in bars]
    colours = [BAR_COLOURS["highlight" if b.get("highlight") else "other"] for b in bars]
    keyed = bool(spec.get("hlines")) or len(set(colours)) > 1  # room beside the bars for the legend
    fig = Figure(figsize=(max(4.0, min(9.6, 1.2 + 0.35 * len(bars))) + (2.4 if keyed else 0), 3.4), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(bars)), _numbers([b.get("value") for b in bars]), color=colours)
    long = len(bars) > 12 or max((len(s) for s in labels), default=0) > 6
    ax.set_xticks(range(len(bars)), labels, rotation=90 if long else 0)
    ax.axhline(0, color="#8a8a8a", lw=0.8)
    ax.grid(axis="x", visible=False)
    if len(set(colours)) > 1:  # two colours need a key: the spec's words, else plain ones
        for kind in ("highlight", "other"):
            ax.bar([0], [0], width=0, color=BAR_COLOURS[kind], label=_text(spec.get(f"{kind}_label", "highlighted" if kind == "highlight" else "other")))
    _hlines(ax, spec)
    ax.set_xlabel(_text(spec.get("x_label", "")))
    ax.set_ylabel(_text(spec.get("y_label", "")))
    _legend(ax)
    return fig


def _grouped_bars(spec: dict) -> Figure:
    """Bars in groups (one per entry of `groups`), one colour per series, e.g. rates before and after each stage."""
    groups = [_text(g) for g in spec.get("groups", [])]
    series = spec.get("series", [])
    width = 0.8 / max(len(series), 1)
    fig = Figure(figsize=(min(9.6, 2.0 + 1.1 * len(groups) * max(1, len(series)) * 0.5) + 2.4, 3.4), layout="constrained")
    ax = fig.subplots()
    for i, s in enumerate(series):
        x = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        ax.bar(x, _numbers(s.get("values", [])), width=width, color=PALETTE[i % len(PALETTE)], label=_text(s.get("label")))
    ax.set_xticks(range(len(groups)), [textwrap.fill(g or "", 14) for g in groups])
    ax.axhline(0, color="#8a8a8a", lw=0.8)
    ax.grid(axis="x", visible=False)
    _hlines(ax, spec)
    ax.set_ylabel(_text(spec.get("y_label", "")))
    _legend(ax)
    return fig


def _heatmap(spec: dict) -> Figure:
    values = np.array([_numbers(row) for row in spec.get("values", [])], dtype=float)
    if values.ndim != 2 or values.size == 0:
        values = np.full((1, 1), np.nan)
    rows, cols = values.shape
    size = min(8.0, 2.5 + 0.13 * max(rows, cols))
    fig = Figure(figsize=(size * max(0.6, min(1.6, cols / max(rows, 1))) + 1.2, size), layout="constrained")
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if lo >= 0 and hi <= 1:  # attention and other probabilities: a fixed 0..1 scale, comparable across heads
        cmap, vmin, vmax = "Blues", 0.0, 1.0
    elif lo < 0 < hi:
        m = max(-lo, hi)
        cmap, vmin, vmax = "RdBu_r", -m, m
    else:
        cmap, vmin, vmax = "viridis", lo, hi
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
    ax.grid(False)
    ax.set_xlabel(_text(spec.get("x_label", "")))
    ax.set_ylabel(_text(spec.get("y_label", "")))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=_text(spec.get("value_label", "")))
    _token_ticks(fig, ax, spec.get("x_labels"), spec.get("y_labels"))
    return fig


def _token_ticks(fig: Figure, ax, x_labels: list | None, y_labels: list | None) -> None:
    """Token labels at a readable size (TICK_PT), every k-th one when the cells are smaller than a line of text."""
    fig.draw_without_rendering()  # lay out once, so that the size of a cell is known
    box = ax.get_window_extent()
    for axis, labels, length in ((ax.xaxis, x_labels, box.width), (ax.yaxis, y_labels, box.height)):
        if not labels:
            continue
        shown = [_token(s) for s in labels]
        cell = length * 72 / fig.dpi / len(shown)  # points per cell
        level = axis is ax.yaxis or max(len(s) for s in shown) * 0.62 * TICK_PT + 2 <= cell  # short x labels fit upright
        every = 1 if axis is ax.xaxis and level else max(1, math.ceil(1.3 * TICK_PT / cell))  # no two labels overlap
        ticks = list(range(0, len(shown), every))
        axis.set_ticks(ticks, [shown[i] for i in ticks], fontsize=TICK_PT, rotation=0 if level else 90)


def _table(spec: dict) -> Figure:
    columns = [_text(c) for c in spec.get("columns", [])]
    rows = [[_text(fmt(c)) for c in row] for row in spec.get("rows", [])]
    width = max(3.0, min(9.6, 0.3 + sum(max([len(c)] + [len(r[j]) for r in rows if j < len(r)]) * 0.09 + 0.5 for j, c in enumerate(columns))))
    fig = Figure(figsize=(width, 0.3 + 0.26 * (len(rows) + 1)))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98))
    ax.axis("off")
    if columns:
        table = ax.table(cellText=rows or None, colLabels=columns, bbox=(0, 0, 1, 1), cellLoc="center", edges="horizontal")
        for (r, _), cell in table.get_celld().items():
            cell.set_edgecolor("#d0d0d0")
            if r == 0:
                cell.set_text_props(fontweight="bold")
    return fig


FRAME_GAP = (255, 255, 255)
MAX_FRAMES = 16  # frames shown per strip: a longer episode shows this many, evenly spaced, its last included


def _frames(spec: dict) -> Figure:
    """Episodes as strips of frames, one strip a row: each frame a list of text rows, one character a tile, coloured
    by `palette` (character → [r, g, b]); `steps` labels each frame. Stored as text, a frame costs a few bytes in
    trial.json; drawn with imshow, it is a picture in the SVG page and the PNG alike."""
    palette = {str(k)[:1]: tuple(int(min(255, max(0, c))) for c in v[:3]) for k, v in spec.get("palette", {}).items()}
    strips = [s for s in spec.get("strips", []) if s.get("frames")]
    shown = [_strip_frames(s) for s in strips]
    tiles_wide = max((sum(len(f[0]) + 1 for f in frames) for frames, _ in shown), default=1)
    fig = Figure(figsize=(min(9.6, 1.0 + 0.13 * tiles_wide), 0.2 + 1.3 * max(1, len(strips))), layout="constrained")
    for ax, strip, (frames, steps) in zip(fig.subplots(max(1, len(strips)), 1, squeeze=False)[:, 0], strips, shown):
        images = [np.array([[palette.get(ch, (200, 200, 200)) for ch in row] for row in f], dtype=np.uint8) for f in frames]
        h = max(im.shape[0] for im in images)
        gap = np.full((h, 1, 3), FRAME_GAP, np.uint8)
        padded = [np.vstack([im, np.full((h - im.shape[0], im.shape[1], 3), FRAME_GAP, np.uint8)]) for im in images]
        ax.imshow(np.hstack([x for im in padded for x in (im, gap)][:-1]), interpolation="nearest")
        ax.set_xlim(-0.5, tiles_wide - 1.5)  # every strip at one scale, from the left: a tile is a tile in every row
        centres = np.cumsum([0] + [im.shape[1] + 1 for im in images[:-1]]) + np.array([im.shape[1] for im in images]) / 2 - 0.5
        ax.set_xticks(centres, [_text(s) for s in steps], fontsize=7)
        ax.set_yticks([])
        ax.grid(False)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_title(_text(strip.get("label", "")), loc="left", fontsize=9)
    return fig


def _strip_frames(strip: dict) -> tuple[list[list[str]], list[str]]:
    """A strip's frames (rows of text, never empty) and their labels, thinned to MAX_FRAMES."""
    frames = [[str(row) for row in f] or [" "] for f in strip["frames"]]
    steps = [str(s) for s in strip.get("steps", range(len(frames)))]
    steps += [str(i) for i in range(len(steps), len(frames))]
    keep = sorted(set(np.linspace(0, len(frames) - 1, min(MAX_FRAMES, len(frames))).round().astype(int)))
    width = max(len(row) for f in frames for row in f)
    return [[row.ljust(width) for row in frames[i]] for i in keep], [steps[i] for i in keep]


def _text(s: Any) -> str | None:
    """Text as written: a "$" is a dollar sign, not the start of mathtext."""
    return None if s is None else str(s).replace("$", r"\$")


def _token(s: Any) -> str:
    """Tokens are shown as they are, except the invisible ones."""
    return _text(str(s).replace("\n", "\\n").replace("\t", "\\t") or "''")


def _hlines(ax, spec: dict) -> None:
    """Thresholds: dashed lines, each with its own dash pattern, named in the legend."""
    for i, h in enumerate(spec.get("hlines", [])):
        ax.axhline(h["y"], color="#444444", ls=HLINE_STYLES[i % len(HLINE_STYLES)], lw=1, label=_text(h.get("label")))


def _legend(ax) -> None:
    """The legend beside the plot, never on it: curves and threshold lines stay readable whatever their shape."""
    handles, labels = ax.get_legend_handles_labels()
    seen = {}
    for h, lab in zip(handles, labels):
        if lab and not lab.startswith("_"):
            seen.setdefault(lab, h)
    if seen:
        wrapped = [textwrap.fill(lab, 28) for lab in seen]
        ax.legend(seen.values(), wrapped, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  ncols=max(1, math.ceil(len(seen) / 14)))


DRAWERS = {"lines": _lines, "bars": _bars, "grouped-bars": _grouped_bars, "heatmap": _heatmap, "table": _table, "frames": _frames}


def to_svg(fig: Figure, prefix: str, label: str) -> str:
    """The figure as an inline <svg>: no XML prologue, no metadata, no namespace URLs, every id prefixed
    so that several figures can share one page."""
    buf = io.StringIO()
    with matplotlib.rc_context({**STYLE, "svg.hashsalt": "seedbed"}):  # the same page for the same result
        fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, count=1, flags=re.DOTALL)
    svg = re.sub(r'(\sid="|url\(#|href="#)', rf"\g<1>{prefix}", svg)
    head = re.match(r"<svg[^>]*>", svg)
    assert head is not None
    width = re.search(r'width="([\d.]+)pt"', head.group(0))
    view = re.search(r'viewBox="([^"]+)"', head.group(0))
    px = float(width.group(1)) * 4 / 3 if width else 960  # pt → CSS px: shown no larger than drawn
    new_head = f'<svg viewBox="{view.group(1) if view else ""}" role="img" aria-label="{esc(label)}" style="max-width:{px:.0f}px">'
    return new_head + svg[head.end() :]


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="png", dpi=150)
    return buf.getvalue()


def main_figure(figures: list[dict]) -> dict | None:
    """The figure marked `main`, else the first."""
    return next((f for f in figures if f.get("main")), figures[0] if figures else None)


# ── text ─────────────────────────────────────────────────────────────────────
def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(v: Any) -> str:
    """A number as a reader wants it: integers with separators, four significant digits otherwise."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == int(v) and abs(v) < 1e15:
            return f"{int(v):,}"
        if abs(v) >= 1e4:
            return f"{v:,.1f}"
        return f"{v:.4g}" if abs(v) >= 1e-3 else f"{v:.3e}"
    return str(v)


def when(iso: str | None) -> str:
    """An ISO time as `<time>`, readable (UTC spelled out)."""
    if not iso:
        return "–"
    try:
        t = datetime.fromisoformat(str(iso))
    except ValueError:
        return esc(iso)
    zone = "" if t.tzinfo is None else " UTC" if t.utcoffset().total_seconds() == 0 else t.strftime(" UTC%z")
    return f'<time datetime="{esc(iso)}">{t.strftime("%Y-%m-%d %H:%M:%S")}{zone}</time>'


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    m, s = divmod(round(float(seconds)), 60)
    return f"{m} min {s} s" if m else f"{float(seconds):.1f} s"


def table(columns: list[str], rows: list[list[str]], numeric: Collection[int] = (), cls: str = "") -> str:
    """An HTML table; cells are already HTML (escaped by the caller)."""
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{esc(c)}</th>' for i, c in enumerate(columns))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{c}</td>' for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def num_cell(v: Any) -> str:
    """A formatted number with its exact value on hover."""
    return f'<span title="{esc(repr(v))}">{esc(fmt(v))}</span>' if isinstance(v, float) else esc(fmt(v))


def numbers_table(numbers: dict) -> str:
    """Named numbers for a reader: what each one is in words, its value, and its key as the JSON holds it."""
    rows = [[esc(label(k)), num_cell(v), f"<code>{esc(k)}</code>"] for k, v in numbers.items()]
    return table(["measurement", "value", "key"], rows, {1}, "evidence")


# Words for the keys the trials write; any other key is read by `label`'s rules.
LABELS = {
    "steps": "steps grown",
    "transition_start": "transition: first step",
    "transition_end": "transition: last step",
    "transition_window_share": "transition window, as a share of training",
    "transition_sharpness": "sharpness of the transition (its slope over the steeper slope around it)",
    "repeated_loss_before": "repeated-half loss before the transition",
    "repeated_loss_after": "repeated-half loss after the transition",
    "repeated_loss_final": "repeated-half loss at the end",
    "repeated_loss_unablated": "repeated-half loss with nothing ablated",
    "first_induction_step": "first step an induction score passed the bar",
    "first_previous_token_step": "first step a previous-token score passed the bar",
    "top_induction_head": "strongest induction head",
    "top_previous_token_head": "strongest previous-token head",
    "k_composition_top_pair": "K-composition of the strongest pair",
    "k_composition_random_q99": "K-composition of random head pairs: 99% quantile",
    "k_composition_random_mean": "K-composition of random head pairs: mean",
    "induction_heads": "induction heads (layer 1, above the bar)",
    "ablate_induction_heads_rise": "rise in loss when every induction head is ablated",
    "outside_heads": "heads outside the circuit",
    "ablate_outside_max_rise": "largest rise in loss when one head outside the circuit is ablated",
    "control_max_induction": "1-layer control: best induction score",
    "control_repeated_loss_final": "1-layer control: repeated-half loss at the end",
    "train/loss": "training loss",
    "eval/loss": "held-out loss",
}
WORDS = [  # key fragments → words, in order
    (r"^watch/", ""), (r"[/_]", " "), (r"\bq(\d+)\b", r"\1% quantile"), (r"\bk composition\b", "K-composition"),
    (r"\bprevious token\b", "previous-token"), (r"\bdigit(\d+)\b", r"digit \1"), (r"\bacc\b", "accuracy"),
    (r"\binit\b", "at initialisation"), (r"\bicl\b", "ICL"), (r"\bmax\b", "largest"), (r"\beval\b", "held-out"),
]


def label(key: str) -> str:
    """A key in words: the known ones from LABELS; per-head keys by pattern; any other key with its underscores
    read as spaces (e.g. "ablate_L0H1_rise" → "rise in loss when L0H1 is ablated")."""
    if key in LABELS:
        return LABELS[key]
    if m := re.fullmatch(r"ablate_(L\d+H\d+)_rise", key):
        return f"rise in loss when {m[1]} is ablated"
    if m := re.fullmatch(r"(?:watch/)?([a-z_]+?)[_/](L\d+H\d+)", key):
        what = label(m[1])
        return f"{what} of {m[2]}" if what.endswith("score") else f"{what} score of {m[2]}"
    for pattern, words in WORDS:
        key = re.sub(pattern, words, key)
    return key.strip()


def conditions_text(c: Any) -> str:
    if isinstance(c, str):
        return c
    try:
        return tomli_w.dumps(c)
    except (TypeError, ValueError):  # TOML has no null: say it in JSON instead
        return json.dumps(c, indent=2)


# ── the page ─────────────────────────────────────────────────────────────────
CSS = """
:root { --ink:#1d1d1f; --muted:#5f6368; --rule:#e2e2e2; --held:#1e7b34; --not:#b3261e; --inc:#9a6700; --none:#6b7280; }
* { box-sizing: border-box; }
body { margin:0; background:#f6f6f3; color:var(--ink);
  font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width:960px; margin:0 auto; padding:36px 40px 56px; background:#fff; min-height:100vh; }
h1 { font-size:30px; line-height:1.2; margin:0 0 6px; }
h2 { font-size:19px; margin:38px 0 10px; padding-bottom:4px; border-bottom:1px solid var(--rule); }
h3 { font-size:15px; margin:18px 0 6px; }
p { margin:8px 0; }
.kicker { text-transform:uppercase; letter-spacing:.08em; font-size:12px; color:var(--muted); margin:0 0 4px; }
.meta, .source, .note { color:var(--muted); font-size:14px; }
nav { font-size:13px; margin-top:14px; color:var(--muted); }
nav a { color:var(--muted); margin-right:12px; }
.badge { display:inline-block; font-size:14px; font-weight:600; padding:3px 12px; border-radius:999px;
  color:#fff; vertical-align:middle; margin-left:10px; letter-spacing:.02em; }
.badge.held { background:var(--held); } .badge.did-not-hold { background:var(--not); }
.badge.inconclusive { background:var(--inc); } .badge.none { background:var(--none); }
blockquote { margin:10px 0; padding:10px 16px; border-left:4px solid #c9d6e8; background:#f7f9fc; font-size:18px; }
.verdict { font-size:18px; font-weight:600; }
.verdict.held { color:var(--held); } .verdict.did-not-hold { color:var(--not); } .verdict.inconclusive { color:var(--inc); }
table { border-collapse:collapse; width:100%; font-size:14px; margin:8px 0; }
th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--rule); vertical-align:top; }
th { font-weight:600; background:#fafafa; }
.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
.mark { font-size:17px; font-weight:700; text-align:center; }
.mark.yes { color:var(--held); } .mark.no { color:var(--not); } .mark.unknown { color:var(--none); }
table.evidence td:last-child, code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; }
table.evidence td:last-child { font-size:12px; color:var(--muted); }
pre { background:#f6f8fa; border:1px solid #eceef1; padding:12px 14px; overflow:auto; font-size:13px; line-height:1.45; }
figure { margin:26px 0; }
figure svg { display:block; width:100%; height:auto; margin:0 auto; }
figure svg image { image-rendering:pixelated; }
figcaption { font-size:14px; color:var(--muted); margin-top:6px; }
figcaption b { color:var(--ink); }
table.evidence { width:auto; min-width:60%; }
.where { font-weight:400; color:var(--muted); font-size:14px; margin-left:6px; }
footer { margin-top:44px; font-size:13px; color:var(--muted); border-top:1px solid var(--rule); padding-top:12px; }
@media print { body { background:#fff; } main { padding:0; } nav { display:none; } figure { break-inside:avoid; } }
"""


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "none"


def render(result: dict) -> str:
    """The whole page for a trial result (or a run result built by `run_result`)."""
    is_trial = result.get("report") != "run"
    name = result.get("trial") or result.get("run") or "report"
    verdict = str(result.get("verdict") or "—")
    badge = slug(verdict) if verdict in VERDICTS else "none"
    figures = result.get("figures", [])
    sections: list[tuple[str, str, str]] = []  # (anchor, heading, html)

    if is_trial:
        sections.append(("claim", "Claim", _claim(result)))
        sections.append(("prediction", "Prediction", _prediction(result)))
        why = f"<p>{esc(result['why'])}</p>" if result.get("why") else ""
        sections.append(("verdict", "Verdict", f'<p class="verdict {badge}">{esc(verdict.capitalize())}.</p>{why}'))
    if figures:
        body = "".join(_figure(i, f) for i, f in enumerate(figures))
        sections.append(("figures", "Figures", body))
    if result.get("evidence"):
        heading, note = (
            ("Evidence", "Every number the verdict was computed from, and its key in <code>trial.json</code>.")
            if is_trial
            else ("Last values", "The last logged value of every metric.")
        )
        sections.append(("evidence", heading, f'<p class="note">{note}</p>' + numbers_table(result["evidence"])))
    if result.get("observer_cost"):
        sections.append(("observer-cost", "Observer cost", _observer_cost(result["observer_cost"])))
    if result.get("emergences") is not None and (result["emergences"] or not is_trial):
        sections.append(("emergences", "Emergences", _emergences(result["emergences"])))
    if result.get("events"):
        rows = [[esc(fmt(s)), esc(k), esc(t)] for s, k, t in result["events"]]
        sections.append(("events", "Events", table(["step", "kind", "text"], rows, {0})))
    if result.get("conditions"):
        sections.append(("conditions", "Conditions", _conditions(result)))

    kicker = "seedbed trial" if is_trial else "seedbed run report — a plain run, not a trial: no claim, no prediction, no verdict"
    meta = [f"scale {esc(result['scale'])}" if result.get("scale") else "", f"seed {esc(result['seed'])}" if "seed" in result else ""]
    if result.get("finished"):
        meta.append(f"finished {when(result['finished'])}")
    if result.get("wall_seconds") is not None:
        meta.append(f"took {esc(duration(result['wall_seconds']))}")
    nav = "".join(f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in sections)
    versions = " · ".join(f"{esc(k)} {esc(v)}" for k, v in (result.get("versions") or {}).items())
    footer = f"seed {esc(result.get('seed', '–'))}" + (f" · {versions}" if versions else "") + " · written by <code>seedbed report</code>"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(name)} — {esc(verdict)} · seedbed</title><style>{CSS}</style></head><body><main>"
        f'<header><p class="kicker">{esc(kicker)}</p>'
        f'<h1>{esc(name)}<span class="badge {badge}">{esc(verdict if verdict in VERDICTS else "no verdict")}</span></h1>'
        f'<p class="meta">{" · ".join(m for m in meta if m)}</p><nav>{nav}</nav></header>'
        + "".join(f'<section id="{a}"><h2>{esc(h)}</h2>{body}</section>' for a, h, body in sections)
        + f"<footer>{footer}</footer></main></body></html>\n"
    )


def _claim(r: dict) -> str:
    source = f'<p class="source">Source: {esc(r["source"])}</p>' if r.get("source") else ""
    return f"<blockquote>{esc(r.get('claim', '–'))}</blockquote>{source}"


def _prediction(r: dict) -> str:
    marks = {True: ("yes", "✓", "held"), False: ("no", "✗", "did not hold"), None: ("unknown", "–", "could not be measured")}
    rows = []
    for p in r.get("predictions", []):
        cls, mark, word = marks.get(p.get("held"), marks[None])
        rows.append(
            [
                esc(p.get("id", "")),
                esc(p.get("text", "")),
                esc(p.get("threshold", "")) + (f'<br><span class="note">null: {esc(p["null"])}</span>' if p.get("null") else ""),
                esc(p.get("measured", "–")),
                f'<span class="mark {cls}" title="{word}" aria-label="{word}">{mark}</span>',
            ]
        )
    written = f'<p class="note">Written down {when(r.get("prediction_written"))}, before the model was grown.</p>'
    return written + table(["", "prediction", "threshold", "measured", "held"], rows)


def _figure(i: int, spec: dict) -> str:
    title = str(spec.get("title") or spec.get("id") or f"figure {i + 1}")
    fig = draw(spec)
    svg = to_svg(fig, prefix=f"f{i + 1}-", label=title)
    caption = f" {esc(spec['caption'])}" if spec.get("caption") else ""
    return f'<figure id="figure-{esc(spec.get("id", i + 1))}">{svg}<figcaption><b>Figure {i + 1}.</b> {esc(title)}.{caption}</figcaption></figure>'


def _observer_cost(cost: dict) -> str:
    obs, train, share = cost.get("observer_seconds"), cost.get("train_seconds"), cost.get("share")
    line = ""
    if obs is not None and train is not None:
        pct = f" ({float(share):.1%} of the total)" if share is not None else ""
        line = f"<p>Watching took {esc(duration(obs))} against {esc(duration(train))} of training{esc(pct)}.</p>"
    rest = {k: v for k, v in cost.items() if not line or k not in ("observer_seconds", "train_seconds", "share")}
    return line + (numbers_table(rest) if rest else "")


def _emergences(items: list) -> str:
    if not items:
        return '<p class="note">No change point was found in any watched series.</p>'
    columns: list[str] = []
    for e in items:
        columns += [k for k in (e if isinstance(e, dict) else {"text": e}) if k not in columns]
    rows = [[num_cell(e.get(c)) if isinstance(e, dict) else esc(e) for c in columns] for e in items]
    numeric = {j for j, c in enumerate(columns) if all(isinstance(e, dict) and isinstance(e.get(c), (int, float, type(None))) for e in items)}
    return table(columns, rows, numeric)


def _conditions(r: dict) -> str:
    out = []
    for name, c in r["conditions"].items():
        where = (r.get("runs") or {}).get(name)
        folder = f' <span class="where">{"this folder" if where == "." else f"in <code>{esc(where)}</code>"}</span>' if where else ""
        out.append(f"<h3>{esc(name)}{folder}</h3><pre>{esc(conditions_text(c))}</pre>")
    return "".join(out)


# ── a plain run as a result ──────────────────────────────────────────────────
def run_result(run_path: Path) -> dict:
    """What a plain `seedbed grow` run has to show, in the shape of a trial result (less claim and verdict)."""
    run = Run.open(run_path, readonly=True)
    try:
        raw = (Path(run_path) / "conditions.toml").read_text()
        cond = tomllib.loads(raw)
        names = run.metric_names()
        metrics = {n: run.metric(n) for n in names}
        events = run.events()
        status, steps = run.status(), run.steps_done()
    finally:
        run.close()

    def series(name: str, label: str) -> dict:
        return {"label": label, "x": [s for s, _ in metrics[name]], "y": [v for _, v in metrics[name]]}

    figures = []
    loss = [series(n, lab) for n, lab in (("train/loss", "training"), ("eval/loss", "held-out")) if n in metrics]
    if loss:
        figures.append({"kind": "lines", "id": "loss", "title": "loss", "x_label": "step", "y_label": "nats per token", "series": loss, "main": True})
    groups: dict[str, list[str]] = {}
    for n in names:
        if n.startswith("watch/"):  # watch/induction/L1H3 → watch/induction; watch/icl_score stays alone
            parts = n.split("/")
            groups.setdefault("/".join(parts[:-1]) if len(parts) > 2 else n, []).append(n)
    for group, members in groups.items():
        figures.append(
            {
                "kind": "lines",
                "id": slug(group),
                "title": group,
                "x_label": "step",
                "y_label": group.split("/")[-1],
                "series": [series(n, n.rsplit("/", 1)[-1] if len(members) > 1 else n) for n in members],
            }
        )
    emergences = []
    for step, kind, text in events:
        if kind == "emergence":
            try:
                e = json.loads(text)
            except ValueError:
                e = None
            emergences.append(e if isinstance(e, dict) else {"step": step, "text": text})
    _window_spans(figures, emergences)
    evidence: dict[str, Any] = {"status": status, "steps": steps}
    evidence.update({n: metrics[n][-1][1] for n in names if metrics[n]})
    return {
        "report": "run",
        "run": Path(run_path).resolve().name,
        "verdict": "—",
        "seed": cond.get("seed", 0),
        "versions": cond.get("versions", {}),
        "conditions": {"conditions.toml": raw},
        "figures": figures,
        "evidence": evidence,
        "emergences": emergences,
        "events": [e for e in events if e[1] != "emergence"],
    }


def _window_spans(figures: list[dict], emergences: list[dict]) -> None:
    """Shade each detected window (an emergence logged as JSON, e.g. by `seedbed llc`) on its own series' figure,
    and every window on the LLC's figure: the LLC is read against the transitions the other series show."""
    windows = [e for e in emergences if isinstance(e.get("start"), (int, float)) and isinstance(e.get("end"), (int, float))]
    for fig in figures:
        own = [e for e in windows if fig["id"] in (slug(str(e.get("series", ""))), slug(str(e.get("series", "")).rsplit("/", 1)[0]))]
        shown = windows if fig["id"] == "watch-llc" else own
        if shown:
            fig["spans"] = [{"from": e["start"], "to": e["end"], "label": str(e.get("label") or e.get("series"))} for e in shown]


# ── writing ──────────────────────────────────────────────────────────────────
# the type of each field of trial.json that the page reads (null is allowed for all: a trial not yet judged)
RESULT_FIELDS: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("trial", "run", "verdict", "why", "claim", "source", "scale", "finished", "prediction_written"), str),
    **dict.fromkeys(("evidence", "observer_cost", "versions", "conditions", "runs"), dict),
    **dict.fromkeys(("figures", "predictions", "events", "emergences"), list),
    "wall_seconds": (int, float),
}


def read_result(run_path: Path) -> dict:
    """The trial's result if there is one, else the run's own; every user mistake a one-line SeedbedError."""
    run_path = Path(run_path)
    if not run_path.exists():
        raise SeedbedError(f"'{run_path}' does not exist: give a run folder (seedbed runs lists them)")
    if not run_path.is_dir():
        raise SeedbedError(f"'{run_path}' is not a folder: give a run folder such as runs/NAME")
    trial = run_path / "trial.json"
    if os.path.lexists(trial):
        fix = "run the trial again to rewrite it"
        result = contained.read_json(trial, fix)
        if not isinstance(result, dict):
            raise SeedbedError(f"'{trial}' does not hold a trial result (a JSON object): {fix}")
        for key, kind in RESULT_FIELDS.items():
            value = result.get(key)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise SeedbedError(f"'{trial}' has a malformed field {key!r} ({type(value).__name__}): {fix}")
        malformed = (
            ("figures", lambda f: isinstance(f, dict)),
            ("predictions", lambda p: isinstance(p, dict)),
            ("events", lambda e: isinstance(e, list) and len(e) == 3),
        )
        for key, ok in malformed:
            if not all(ok(item) for item in result.get(key) or []):
                raise SeedbedError(f"'{trial}' has a malformed entry in {key!r}: {fix}")
        return result
    if (run_path / "run.sqlite").is_file():
        return run_result(run_path)
    raise SeedbedError(f"'{run_path}' has neither trial.json nor run.sqlite: give a folder written by seedbed grow or seedbed trial")


def write_report(run_path: str | Path) -> Path:
    """Write RUN/report.html (and RUN/report-main.png, the main figure) atomically; return the page's path."""
    run_path = Path(run_path)
    result = read_result(run_path)
    page = render(result)
    main = main_figure(result.get("figures", []))
    png = run_path / "report-main.png"
    if main is not None:
        write_atomic(png, to_png(draw(main, titled=True)))
    else:
        png.unlink(missing_ok=True)  # an old picture would misrepresent this report
    out = run_path / "report.html"
    write_atomic(out, page.encode("utf-8"))
    return out


def report_command(run_path: Path) -> Path:
    """`seedbed report RUN`: a run's or a trial's report; a `--seeds` folder's summary page."""
    run_path = Path(run_path)
    if run_path.is_dir() and not os.path.lexists(run_path / "trial.json") and os.path.lexists(run_path / "summary.json"):
        from seedbed.trials.runner import rewrite_summary_report

        return rewrite_summary_report(run_path)
    return write_report(run_path)
