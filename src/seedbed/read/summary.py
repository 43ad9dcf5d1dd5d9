"""What `seedbed read` shows: every head's scores, the heads that stand out, and their patterns.

A head *stands out* for a score when it passes that score's threshold below. The
thresholds are fixed here, not fitted to any run, and are printed with the table:
0.4 of a head's attention on the place the behaviour predicts is far above what a
head spreading attention over ~30 earlier positions gives (~0.03); a copying score
of 0.7 means the head's direct OV circuit is dominated by positive eigenvalues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from seedbed.errors import SeedbedError
from seedbed.hooks import run_with_cache
from seedbed.read import html
from seedbed.read.figures import attention_figure, save_png
from seedbed.read.load import Grown
from seedbed.read.scores import (
    composition_baseline,
    composition_scores,
    copying_scores,
    pattern_scores,
    previous_token_scores,
    repeated_tokens,
)

THRESHOLDS = {"previous_token": 0.4, "induction": 0.4, "duplicate_token": 0.4, "copying": 0.7}
PICTURE_TOKENS = 48  # longer examples make unreadable pictures


@dataclass
class Standout:
    score: str
    layer: int
    head: int
    value: float

    @property
    def head_name(self) -> str:
        return f"L{self.layer}H{self.head}"

    def __str__(self) -> str:
        return f"{self.head_name} {self.score.replace('_', '-')} {self.value:.2f}"


@dataclass
class Composition:
    kind: str
    earlier: tuple[int, int]
    later: tuple[int, int]
    value: float
    baseline: float

    def __str__(self) -> str:
        (l1, h1), (l2, h2) = self.earlier, self.later
        return f"L{l1}H{h1} → L{l2}H{h2} {self.kind.upper()}-composition {self.value:.2f} (random heads: {self.baseline:.2f})"


@dataclass
class HeadReading:
    scores: dict[str, Tensor]  # score name -> [n_layers, n_heads]
    standouts: list[Standout]
    compositions: list[Composition] = field(default_factory=list)  # the strongest pair per kind
    step: int | None = None  # the checkpoint read, and its run's folder name, when known
    run: str | None = None

    def _repr_html_(self) -> str:
        """The `seedbed read` table for a notebook: every head, each score on its colour, bold where it stands out."""
        names = list(self.scores)
        n_layers, n_heads = next(iter(self.scores.values())).shape
        rows = []
        for l in range(n_layers):
            for h in range(n_heads):
                cells = []
                for name in names:
                    v, bar = float(self.scores[name][l, h]), THRESHOLDS.get(name, math.inf)
                    cells.append(html.shaded(v, -1.0 if name == "copying" else 0.0, 1.0, bold=v >= bar))
                rows.append([f"L{l}H{h}", *cells])
        columns = ["head", *(f"{n.replace('_', '-')} (≥{THRESHOLDS[n]})" if n in THRESHOLDS else n for n in names)]
        lines = [*standout_lines(self), *map(str, self.compositions)]
        body = html.table(columns, rows, numeric=set(range(1, len(columns))))
        body += "".join(f"<div>{html.esc(line)}</div>" for line in lines)
        note = ("Scores on seeded random sequences (BOS first when the soil has one), the same for every checkpoint; "
                "bold: at or above the fixed threshold. Copying is −1..1, the others 0..1.")
        return html.box("Head scores" + html.at(self.run, self.step), body, note)


def read_heads(grown: Grown, seed: int = 0) -> HeadReading:
    """Every head's previous-token, induction, duplicate-token and copying scores.

    Pattern scores use seeded random sequences (BOS first when the soil has one), so
    they never touch the training data and any checkpoint can be compared with any other.
    """
    model, bos = grown.model, _bos(grown)
    nan = torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))  # a context too short to measure in
    try:
        previous = previous_token_scores(model, seed=seed, bos=bos)
    except SeedbedError:
        previous = nan
    try:
        on_repeats = pattern_scores(model, seed=seed, bos=bos)  # induction and duplicate-token from one forward
    except SeedbedError:
        on_repeats = {"induction": nan, "duplicate_token": nan}
    scores = {
        "previous_token": previous,
        "induction": on_repeats["induction"],
        "duplicate_token": on_repeats["duplicate_token"],
        "copying": copying_scores(model),
    }
    standouts = [
        Standout(name, l, h, float(s[l, h]))
        for name, s in scores.items()
        for l, h in (s >= THRESHOLDS[name]).nonzero().tolist()
    ]
    standouts.sort(key=lambda s: -s.value)
    compositions = []
    if model.cfg.n_layers > 1:
        for kind in ("q", "k", "v"):
            c = composition_scores(model, kind)
            i = int(c.argmax())
            l1, h1, l2, h2 = (int(v) for v in torch.unravel_index(torch.tensor(i), c.shape))
            compositions.append(Composition(kind, (l1, h1), (l2, h2), float(c.flatten()[i]), composition_baseline(model, kind)))
    return HeadReading(scores, standouts, compositions, grown.step, grown.run.name)


def standout_lines(reading: HeadReading) -> list[str]:
    """One line per score that some head passes, strongest head first: 'induction: L1H3 0.91, L1H0 0.90'."""
    lines = []
    for name in reading.scores:
        heads = [s for s in reading.standouts if s.score == name]
        if heads:
            lines.append(f"{name.replace('_', '-')} (≥{THRESHOLDS[name]}): " + ", ".join(f"{s.head_name} {s.value:.2f}" for s in heads))
    return lines


def example_tokens(grown: Grown, seed: int = 0) -> Tensor:
    """One sequence to draw patterns on: held-out data from the soil, or repeated random tokens."""
    if grown.soil is not None:
        tokens = grown.soil.eval_batch(0, 1).inputs
    else:
        L = min(16, (grown.model.cfg.n_ctx - 1) // 2)
        tokens = repeated_tokens(grown.model.cfg.d_vocab, L, batch=1, seed=seed, bos=_bos(grown))
    return tokens[:, :PICTURE_TOKENS]


def pictured_heads(reading: HeadReading, limit: int = 6) -> list[tuple[int, int, str]]:
    """The heads to draw: those that stand out, else the best head of each pattern score."""
    chosen: dict[tuple[int, int], str] = {}
    for s in reading.standouts:
        if s.score != "copying":
            chosen.setdefault((s.layer, s.head), str(s))
    if not chosen:
        for name in ("induction", "previous_token", "duplicate_token"):
            t = reading.scores[name]
            if t.isnan().all():
                continue
            l, h = divmod(int(t.argmax()), t.shape[1])
            chosen.setdefault((l, h), f"L{l}H{h} {name.replace('_', '-')} {float(t[l, h]):.2f} (best, below threshold)")
    return [(l, h, title) for (l, h), title in list(chosen.items())[:limit]]


def draw_patterns(grown: Grown, heads: list[tuple[int, int, str]], out: Path, seed: int = 0) -> list[Path]:
    """One PNG per head: its attention pattern on the example sequence."""
    tokens = example_tokens(grown, seed)
    layers = sorted({l for l, _, _ in heads})
    _, cache = run_with_cache(grown.model, tokens, [f"blocks.{l}.attn.hook_pattern" for l in layers])
    labels = token_labels(grown, tokens[0])
    paths = []
    for l, h, title in heads:
        pattern = cache[f"blocks.{l}.attn.hook_pattern"][0, h]
        fig = attention_figure(pattern, labels, f"{title} — step {grown.step}")
        paths.append(save_png(fig, out / f"L{l}H{h}.png"))
    return paths


def token_labels(grown: Grown, tokens: Tensor) -> list[str]:
    """Each token of one sequence as text a picture can show: whitespace and control characters spelt out."""
    labels = [grown.decode([int(t)]) or "·" for t in tokens]
    return [repr(s)[1:-1] if s.isspace() or not s.isprintable() else s for s in labels]


def _bos(grown: Grown) -> int | None:
    return grown.soil.bos if grown.soil is not None else None
