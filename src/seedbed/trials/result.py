"""A trial's result as an object a notebook shows: `TrialResult.open(folder)`.

The folder's `trial.json` (or, for a plain run, what its report shows; for `--seeds`, its
`summary.json`) is read as untrusted input, checked the way `seedbed report` checks it,
and shown inline: the claim, each prediction against what was measured, the verdict, and
the main figure as SVG. `report.html` in the folder has everything else.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedbed import contained
from seedbed.errors import SeedbedError
from seedbed.read import html
from seedbed.report import draw, main_figure, read_result, to_svg
from seedbed.trials.base import HELD, NOT_HELD
from seedbed.trials.runner import SUMMARY

VERDICT_COLOURS = {HELD: "#1e7b34", NOT_HELD: "#b3261e"}  # anything else (inconclusive, no verdict): amber or grey
MARKS = {True: "✓", False: "✗", None: "–"}
_figures = itertools.count(1)  # each SVG's ids get their own prefix, so several outputs can share a notebook


@dataclass
class TrialResult:
    """What a trial (or a plain run, or a --seeds summary) found, read from its folder."""

    folder: Path
    result: dict[str, Any]

    @classmethod
    def open(cls, folder: str | Path) -> TrialResult:
        folder = Path(folder)
        if folder.is_dir() and not os.path.lexists(folder / "trial.json") and os.path.lexists(folder / SUMMARY):
            return cls(folder, _summary(folder))
        return cls(folder, read_result(folder))

    @property
    def verdict(self) -> str | None:
        v = self.result.get("verdict")
        return v if isinstance(v, str) and v != "—" else None

    def _repr_html_(self) -> str:
        r = self.result
        name = str(r.get("trial") or r.get("run") or self.folder.name)
        verdict = self.verdict or "no verdict (a plain run)"
        badge = (f'<span style="display:inline-block;color:#fff;background:{VERDICT_COLOURS.get(verdict, "#9a6700" if self.verdict else "#6b7280")};'
                 f'border-radius:999px;padding:1px 10px;margin-left:6px;font-size:12px">{html.esc(verdict)}</span>')
        meta = " · ".join(f"{k} {html.esc(r[k])}" for k in ("scale", "seed") if r.get(k) is not None)
        body = f'<div style="color:{html.MUTED}">{meta}{badge}</div>'
        if r.get("claim"):
            body += f'<blockquote style="margin:8px 0;padding:6px 12px;border-left:4px solid #c9d6e8;background:#f7f9fc">{html.esc(r["claim"])}</blockquote>'
        if r.get("per_seed"):
            body += _seeds_table(r)
        elif r.get("predictions"):
            rows = [[html.esc(p.get("id", "")), html.esc(p.get("text", "")), html.esc(p.get("threshold", "")),
                     html.esc(p.get("measured", "–")), MARKS.get(p.get("held"), "–")] for p in r["predictions"] if isinstance(p, dict)]
            body += html.table(["", "prediction", "threshold", "measured", "held"], rows)
        if r.get("why"):
            body += f"<div><b>{html.esc(verdict.capitalize())}</b>: {html.esc(r['why'])}</div>"
        body += _main_figure(r.get("figures") or [])
        return html.box(f"{name}", body, f"Everything else: {self.folder / 'report.html'} (seedbed report {self.folder} writes it).")


def _main_figure(figures: list) -> str:
    """The main figure as inline SVG, without matplotlib's page-wide <style> (it would reach the whole notebook)."""
    spec = main_figure([f for f in figures if isinstance(f, dict)])
    if spec is None:
        return ""
    title = str(spec.get("title") or spec.get("id") or "figure")
    svg = to_svg(draw(spec, titled=True), prefix=f"sb{next(_figures)}-", label=title)
    return '<div style="max-width:640px;margin-top:8px">' + re.sub(r"<style.*?</style>", "", svg, flags=re.DOTALL) + "</div>"


def _seeds_table(r: dict) -> str:
    ids = [str(p.get("id", "")) for p in r.get("predictions", []) if isinstance(p, dict)]
    rows = [[html.esc(s.get("seed")), html.esc(s.get("verdict")), *(MARKS.get((s.get("held") or {}).get(i), "–") for i in ids),
             html.esc(s.get("why", ""))] for s in r["per_seed"] if isinstance(s, dict)]
    return html.table(["seed", "verdict", *ids, "why"], rows)


def _summary(folder: Path) -> dict:
    """A --seeds folder's summary.json, read as untrusted input: a JSON object whose lists hold objects."""
    path, fix = folder / SUMMARY, "run the trial with --seeds again to rewrite it"
    s = contained.read_json(path, fix)
    ok = isinstance(s, dict) and all(isinstance(s.get(k, []), list) for k in ("per_seed", "predictions", "figures"))
    if not ok:
        raise SeedbedError(f"'{path}' is not a summary seedbed can read: {fix}")
    return s
