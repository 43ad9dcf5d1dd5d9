"""Emergence: find where an observed series changes abruptly, and by how much.

The model of a transition is the simplest that has one: a continuous piecewise-linear
curve with two change points, i.e. before / during / after. The change points are
found by exact dynamic programming over every pair of candidate steps with
`ruptures` (Truong, Oudre & Vayatis 2020, "Selective review of offline change point
detection methods"; cost "clinear"), on the series resampled to an even grid. The
transition is the middle segment; it counts as an emergence when it is both

- *abrupt*: its slope is at least `SHARPNESS` times the steeper of the two segments
  around it, and
- *real*: the change it makes is at least `NOISE_MULTIPLE` times the series' own
  step-to-step noise (a robust estimate: the median absolute deviation of the first
  differences).

Both numbers are fixed here, once, for every series and every trial; a trial's own
prediction (e.g. "the window is shorter than 20% of training") is judged on top.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import ruptures

SHARPNESS = 3.0
NOISE_MULTIPLE = 10.0
MAX_POINTS = 64  # longer series are resampled to this many points (the fit is O(n²))
MIN_POINTS = 8
SEGMENT_POINTS = 3  # ruptures' "clinear" cost needs 3 points a segment: a transition (3 segments) needs 9


@dataclass(frozen=True)
class Emergence:
    """A transition in one series: the window [start, end] in steps, the fitted values at its ends."""

    series: str
    start: int
    end: int
    before: float
    after: float
    sharpness: float  # the window's slope over the steeper slope around it (inf when both are flat)
    noise: float  # the series' step-to-step noise (robust standard deviation)

    @property
    def size(self) -> float:
        return self.after - self.before

    @property
    def step(self) -> int:
        """Where the change is fastest: the middle of the window (a single step to quote)."""
        return (self.start + self.end) // 2

    def as_dict(self) -> dict:
        return {**asdict(self), "size": self.size, "step": self.step}

    def line(self, label: str | None = None, unit: str = "") -> str:
        """'steps 425–750 — induction score of L1H3 rose 0.02 → 0.74'"""
        verb = "rose" if self.size > 0 else "fell"
        what = label or self.series
        if unit:
            return f"steps {self.start:,}–{self.end:,} — {what} {verb} {abs(self.size):.2g} {unit} ({self.before:.3g} → {self.after:.3g})"
        return f"steps {self.start:,}–{self.end:,} — {what} {verb} {self.before:.3g} → {self.after:.3g}"


def even_grid(steps: Sequence[float], values: Sequence[float], max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The series on evenly spaced steps (linear interpolation), at most `max_points` of them.

    Observations are denser early (log-spaced checkpoints) and wherever checkpoints
    were densified; change-point costs assume even spacing.
    """
    x, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    spacing = max(float(np.median(np.diff(x))), (x[-1] - x[0]) / (max_points - 1))
    grid = np.linspace(x[0], x[-1], int(round((x[-1] - x[0]) / spacing)) + 1)
    return grid, np.interp(grid, x, y)


def noise_level(y: np.ndarray) -> float:
    """Robust standard deviation of the step-to-step noise (MAD of first differences / √2)."""
    d = np.diff(y)
    return float(np.median(np.abs(d - np.median(d))) / 0.6745 / math.sqrt(2))


def fit_segments(grid: np.ndarray, y: np.ndarray, n_changes: int) -> list[tuple[int, int]]:
    """Index ranges [a, b] (inclusive ends, shared between neighbours) of the best continuous
    piecewise-linear fit with `n_changes` change points."""
    algo = ruptures.Dynp(model="clinear", min_size=SEGMENT_POINTS, jump=1).fit(y.reshape(-1, 1))
    ends = algo.predict(n_bkps=n_changes)  # last index of each segment + 1
    # clinear's segment [s, e) is the line from point s - 1 to point e - 1: the knots are at e - 1
    edges = [0] + [e - 1 for e in ends[:-1]] + [len(y) - 1]
    return list(zip(edges[:-1], edges[1:]))


def _slope(grid: np.ndarray, y: np.ndarray, a: int, b: int) -> float:
    return (y[b] - y[a]) / max(grid[b] - grid[a], 1e-12)


def transition(name: str, steps: Sequence[float], values: Sequence[float]) -> Emergence | None:
    """The one abrupt transition of a series (see the module docstring), or None."""
    if len([v for v in values if v is not None and math.isfinite(v)]) < MIN_POINTS:
        return None
    grid, y = even_grid(steps, values)
    if len(y) < max(MIN_POINTS, 3 * SEGMENT_POINTS):
        return None
    noise = noise_level(y)
    (a0, b0), (a1, b1), (a2, b2) = fit_segments(grid, y, 2)
    inside = _slope(grid, y, a1, b1)
    outside = max(abs(_slope(grid, y, a0, b0)), abs(_slope(grid, y, a2, b2)))
    sharpness = abs(inside) / outside if outside > 0 else math.inf
    change = y[b1] - y[a1]
    if sharpness < SHARPNESS or abs(change) < NOISE_MULTIPLE * max(noise, 1e-12):
        return None
    return Emergence(name, int(round(grid[a1])), int(round(grid[b1])), float(y[a1]), float(y[b1]), float(sharpness), noise)


def onset(name: str, steps: Sequence[float], values: Sequence[float]) -> int | None:
    """While growing: the step where the series started changing abruptly, if it has.

    One change point on the data so far; an onset is a later segment at least
    `SHARPNESS` times steeper than the earlier one that has already moved the series
    by `NOISE_MULTIPLE` times its noise. Used to keep checkpoints dense through a
    transition that is still under way.
    """
    if len(values) < MIN_POINTS:
        return None
    grid, y = even_grid(steps, values)
    if len(y) < MIN_POINTS:
        return None
    noise = noise_level(y)
    (a0, b0), (a1, b1) = fit_segments(grid, y, 1)
    # the earlier slope, at least what noise alone makes of a slope over its length (a few
    # points of a steady trend can look flat by chance, and anything would look steep after them)
    early = max(abs(_slope(grid, y, a0, b0)), 2 * math.sqrt(2) * noise / max(grid[b0] - grid[a0], 1e-12))
    late = abs(_slope(grid, y, a1, b1))
    if late >= SHARPNESS * early and abs(y[b1] - y[a1]) >= NOISE_MULTIPLE * max(noise, 1e-12):
        return int(round(grid[a1]))
    return None
