"""Trial: exact match on a sum jumps, while per-digit likelihood and edit distance move smoothly.

Wei et al. 2022 ("Emergent Abilities of Large Language Models", arXiv 2206.07682) call
an ability emergent when it is absent in smaller models and present in larger ones,
jumping rather than growing. Schaeffer, Miranda & Koyejo 2023 ("Are Emergent Abilities
of Large Language Models a Mirage?", arXiv 2304.15004) answer that the jumps come from
the metric: exact match on an L-token answer is roughly the product of L per-token
accuracies, so a smooth per-token improvement looks like a sudden one. Conditions:
1-layer transformers on `digit-addition` (fresh sums every batch, answer most
significant digit first), one run per width; the same data and steps for every width.

What is watched, on one fixed held-out batch of sums: the whole answer generated
greedily from `a+b=` (exact match, token edit distance, each digit right or wrong),
and the true answer's log-likelihood under teacher forcing (mean per digit, and per digit).

Read top to bottom: the claim, the predictions (thresholds fixed here, before any
run), the conditions per scale, the observer, what is measured, how each prediction
is judged.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedbed.conditions import Conditions, parse
from seedbed.model import evaluating
from seedbed.run import Run
from seedbed.trials.base import Check, Evidence, Prediction, Trial, register
from seedbed.watch import transition

LO, HI = 0.1, 0.9  # a metric's rise: from the first step it has made 10% of its total change to the first it has made 90%
STEP_WINDOW = 0.25  # (a) exact match's 10→90% rise takes less than this share of training …
STEP_RISE = 0.5  # (a) … and gains at least this much (from near 0)
SPAN_RATIO = 2.0  # (b) the continuous metrics' 10→90% rise takes at least this many times as long as exact match's
DIGIT_SPREAD = 0.2  # (c) the answer digits' accuracy crosses 50% at steps spread over at least this share of training …
DIGIT_DISTINCT = 3  # (c) … at this many different steps at least (observations are `observe_every` apart)
SIZE_JUMP = 0.5  # (d) exact match's largest jump between neighbouring widths is at least this share of its range across widths
SIZE_RATIO = 1.5  # (d) … and at least this many times the continuous metrics' largest neighbouring share

WATCH_INDEX = 30_000  # the held-out batch the observer generates on (evaluation uses indices 0, 1, …)
WATCH_SIZE = 256

WIDTHS = {"tiny": [8, 16, 32], "small": [16, 32, 40, 48, 56, 64, 96], "full": [16, 32, 64, 128, 256, 512]}
MAIN_WIDTH = {"tiny": 32, "small": 64, "full": 256}


@register
class Mirage(Trial):
    name = "mirage"
    claim = (
        "Exact match on a whole multi-digit sum rises abruptly, over training and across model sizes, "
        "while the per-digit log-likelihood and the edit distance of the same answers improve smoothly: "
        "the jump is in the metric as much as in the model."
    )
    source = ("Wei et al. 2022, Emergent Abilities of Large Language Models (arXiv 2206.07682); "
              "Schaeffer, Miranda & Koyejo 2023, Are Emergent Abilities of Large Language Models a Mirage? (arXiv 2304.15004)")
    observe_every = {"tiny": 10, "small": 50, "full": 100}
    watch_series = {"watch/exact_match": ("exact match", 0.2), "watch/log_likelihood": ("mean log-likelihood per digit", 0.2)}
    predictions = [
        Prediction("a", "over training, exact match on the whole answer rises abruptly, from near 0",
                   f"its {LO:.0%}→{HI:.0%} rise takes < {STEP_WINDOW:.0%} of training and gains > {STEP_RISE:g}"),
        Prediction("b", "over the same steps, the continuous metrics (mean log-likelihood per digit, edit distance) improve over a much wider span",
                   f"both their {LO:.0%}→{HI:.0%} rises take ≥ {SPAN_RATIO:g}× as long as exact match's"),
        Prediction("c", "each answer digit has its own transition: the digits are learned at different steps",
                   f"per-digit accuracy (generated) first passes 50% at ≥ {DIGIT_DISTINCT} different steps, spread over ≥ {DIGIT_SPREAD:.0%} of training"),
        Prediction("d", "across widths, exact match jumps between two neighbouring sizes while the continuous metrics change gradually",
                   f"exact match's largest step between neighbouring widths is ≥ {SIZE_JUMP:.0%} of its range across widths, "
                   f"and ≥ {SIZE_RATIO:g}× the largest share of either continuous metric"),
    ]

    # ── conditions ──────────────────────────────────────────────────────────
    def conditions(self, scale: str, seed: int) -> dict[str, Conditions]:
        soil = {"kind": "digit-addition", "n_digits": 5}
        arch = {"n_layers": 1, "n_heads": 4, "n_ctx": 17}
        sched = {"steps": 3000, "batch_size": 64, "warmup_steps": 100, "decay": "constant", "eval_every": 250}
        if scale == "tiny":  # seconds: for the tests
            soil.update(n_digits=3)
            arch.update(n_ctx=11)
            sched.update(steps=600, batch_size=64, warmup_steps=20, eval_every=100)
        elif scale == "full":
            sched.update(steps=10000, batch_size=128, eval_every=500)
        runs = {}
        for width in [MAIN_WIDTH[scale]] + [w for w in WIDTHS[scale] if w != MAIN_WIDTH[scale]]:
            runs["main" if width == MAIN_WIDTH[scale] else f"d{width}"] = parse({
                "name": f"mirage-d{width}", "seed": seed, "soil": soil, "architecture": {**arch, "d_model": width},
                "objective": {"loss_on": "answer"},
                "optimizer": {"lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.1, "grad_clip": 1.0},
                "schedule": sched, "checkpoints": {"log_until": 0, "every": sched["steps"]},
            })
        return runs

    def observers(self, model, soil) -> list:
        return [AnswerWatch(soil)]

    # ── measurements ────────────────────────────────────────────────────────
    def measure(self, path: Path) -> Evidence:
        ev = Evidence()
        n = ev.numbers
        run = Run.open(path / "main", readonly=True)
        total = run.conditions.schedule.steps
        n["steps"] = total
        n["n_digits"] = run.conditions.soil.n_digits
        width = run.conditions.architecture.d_model
        series = {name: run.metric(name) for name in run.metric_names() if name.startswith("watch/")}
        run.close()
        steps = [s for s, _ in series["watch/exact_match"]]
        col = lambda name: np.array([v for _, v in series[name]])
        exact, edit, ll = col("watch/exact_match"), col("watch/edit_distance"), col("watch/log_likelihood")
        places = sorted(int(k.removeprefix("watch/digit").removesuffix("_accuracy")) for k in series if k.endswith("_accuracy"))
        n1 = len(places)

        # (a), (b) the span of each metric's rise over training ("end": the mean over the last tenth of the observations)
        for key, values, up in (("exact_match", exact, True), ("log_likelihood", ll, True), ("edit_distance", edit, False)):
            r = rise(steps, values, up)
            n[f"{key}_start"], n[f"{key}_end"] = round(float(values[0]), 4), round(final(list(zip(steps, values))), 4)
            n[f"{key}_rise_from"], n[f"{key}_rise_to"] = r
            n[f"{key}_rise_share"] = round((r[1] - r[0]) / total, 4)
        n["exact_match_gain"] = round(n["exact_match_end"] - n["exact_match_start"], 4)
        for key in ("log_likelihood", "edit_distance"):
            em = max(n["exact_match_rise_to"] - n["exact_match_rise_from"], 1)
            n[f"{key}_span_ratio"] = round((n[f"{key}_rise_to"] - n[f"{key}_rise_from"]) / em, 2)

        # (c) when each digit's (generated) accuracy first passes 50%
        crossings = {}
        for p in places:
            acc = col(f"watch/digit{p}_accuracy")
            crossings[p] = next((s for s, v in zip(steps, acc) if v > 0.5), None)
            n[f"digit{p}_half_step"] = crossings[p]
            n[f"digit{p}_final_accuracy"] = round(float(acc[-1]), 4)
        passed = [s for s in crossings.values() if s is not None]
        n["digits_passed_half"] = len(passed)
        n["digit_half_distinct_steps"] = len(set(passed))
        n["digit_half_spread_share"] = round((max(passed) - min(passed)) / total, 4) if passed else None

        # emergences: whatever the change-point detector finds in each watched series
        labels = {"watch/exact_match": "exact match", "watch/log_likelihood": "mean log-likelihood per digit", "watch/edit_distance": "edit distance"}
        labels.update({f"watch/digit{p}_accuracy": f"digit {p} accuracy" for p in places})
        labels.update({f"watch/digit{p}_log_likelihood": f"digit {p} log-likelihood" for p in places})
        for name, label in labels.items():
            t = transition(name, steps, col(name))
            if t is not None:
                ev.emergences.append({**t.as_dict(), "label": label})
        n["exact_match_detected"] = any(e["series"] == "watch/exact_match" for e in ev.emergences)
        n["log_likelihood_detected"] = any(e["series"] == "watch/log_likelihood" for e in ev.emergences)

        # (d) across widths: every run's final values
        sizes = []
        for folder in sorted(p for p in path.iterdir() if (p / "run.sqlite").is_file()):  # main and every width; the runner checked all grew
            r = Run.open(folder, readonly=True)
            sizes.append((r.conditions.architecture.d_model, _n_params(r.conditions),
                          {k: final(r.metric(f"watch/{k}")) for k in ["exact_match", "edit_distance", "log_likelihood"] + [f"digit{p}_accuracy" for p in places]}))
            r.close()
        sizes.sort()
        n["widths"] = ", ".join(str(w) for w, _, _ in sizes)
        for w, params, m in sizes:
            n[f"d{w}_params"] = params
            for k in ("exact_match", "edit_distance", "log_likelihood"):
                n[f"d{w}_{k}"] = round(m[k], 4)
        for key in ("exact_match", "log_likelihood", "edit_distance"):
            n[f"size_{key}_largest_share"] = largest_share([m[key] for _, _, m in sizes])

        # figures: the same axes for the discontinuous and the continuous metrics
        def accuracy_like(ex: float, ed: float, lg: float) -> tuple[float, float, float]:
            return ex, 1 - ed / n1, math.exp(lg)

        product = np.prod([col(f"watch/digit{p}_accuracy") for p in places], axis=0)
        n["exact_match_vs_digit_product_max_gap"] = round(float(np.max(np.abs(exact - product))), 4)  # Schaeffer: exact match ≈ ∏ per-digit accuracy
        em_span = [{"from": n["exact_match_rise_from"], "to": n["exact_match_rise_to"], "label": "exact match 10→90%"}]
        ev.figures.append({
            "kind": "lines", "id": "over-steps", "main": True,
            "title": f"Over training (width {width}): exact match jumps late; the metrics with per-digit credit climb earlier, in steps",
            "x_label": "step", "y_label": "score (1 = perfect)",
            "series": [
                {"label": "exact match", "x": steps, "y": exact.tolist()},
                {"label": "product of per-digit accuracies", "x": steps, "y": product.tolist()},
                {"label": f"1 − edit distance / {n1}", "x": steps, "y": (1 - edit / n1).tolist()},
                {"label": "exp(mean log-likelihood per digit)", "x": steps, "y": np.exp(ll).tolist()},
            ],
            "spans": em_span,
            "caption": EMERGENCE_SENTENCE,
        })
        xs = [p for _, p, _ in sizes]
        acc = [accuracy_like(m["exact_match"], m["edit_distance"], m["log_likelihood"]) for _, _, m in sizes]
        ev.figures.append({
            "kind": "lines", "id": "over-size", "log_x": True,
            "title": f"Across model sizes (widths {n['widths']}), after {total:,} steps each",
            "x_label": "parameters", "y_label": "score (1 = perfect)",
            "series": [
                {"label": "exact match", "x": xs, "y": [a[0] for a in acc]},
                {"label": "product of per-digit accuracies", "x": xs, "y": [float(np.prod([m[f"digit{p}_accuracy"] for p in places])) for _, _, m in sizes]},
                {"label": f"1 − edit distance / {n1}", "x": xs, "y": [a[1] for a in acc]},
                {"label": "exp(mean log-likelihood per digit)", "x": xs, "y": [a[2] for a in acc]},
            ],
            "caption": ("One run per width, all stopped at the same step. A width that has not yet passed its digits' own transitions "
                        "scores low on every metric, and when those transitions come varies from run to run, so the per-digit "
                        "metrics can jump between neighbouring widths as well (prediction d)."),
        })
        ev.figures.append({
            "kind": "lines", "id": "digits", "title": "Each answer digit (by place value; 0 = units) over training: generated accuracy",
            "x_label": "step", "y_label": "accuracy",
            "series": [{"label": f"digit {p}", "x": steps, "y": col(f"watch/digit{p}_accuracy").tolist()} for p in places],
            "hlines": [{"y": 0.5, "label": "50%"}],
        })
        ev.figures.append({
            "kind": "lines", "id": "digit-likelihood", "title": "Each answer digit over training: log-likelihood of the true digit (teacher-forced)",
            "x_label": "step", "y_label": "nats",
            "series": [{"label": f"digit {p}", "x": steps, "y": col(f"watch/digit{p}_log_likelihood").tolist()} for p in places],
        })
        return ev

    # ── the verdict, from the predictions and the evidence only ─────────────
    def judge(self, ev: Evidence) -> list[Check]:
        n = ev.numbers
        checks = []
        share, gain = n["exact_match_rise_share"], n["exact_match_gain"]
        checks.append(Check("a", f"exact match {n['exact_match_start']:.2f} → {n['exact_match_end']:.2f}; 10→90% in steps "
                                 f"{n['exact_match_rise_from']:,}–{n['exact_match_rise_to']:,}: {share:.1%} of training",
                            share < STEP_WINDOW and gain > STEP_RISE))
        rl, re_ = n["log_likelihood_span_ratio"], n["edit_distance_span_ratio"]
        checks.append(Check("b", f"10→90% spans: log-likelihood steps {n['log_likelihood_rise_from']:,}–{n['log_likelihood_rise_to']:,} ({rl:.1f}× exact match's), "
                                 f"edit distance {n['edit_distance_rise_from']:,}–{n['edit_distance_rise_to']:,} ({re_:.1f}×)",
                            None if gain <= STEP_RISE else (rl >= SPAN_RATIO and re_ >= SPAN_RATIO)))
        spread, k = n["digit_half_spread_share"], n["digits_passed_half"]
        places = sorted(int(key.removeprefix("digit").removesuffix("_half_step")) for key in n if key.endswith("_half_step"))
        when = ", ".join(f"{p}: {n[f'digit{p}_half_step']:,}" if n[f"digit{p}_half_step"] is not None else f"{p}: never" for p in places)
        if k < 2:
            checks.append(Check("c", f"only {k} digit(s) passed 50% ({when})", False))
        else:
            distinct = n["digit_half_distinct_steps"]
            checks.append(Check("c", f"digits pass 50% at steps {when} (by place): {distinct} different steps, spread over {spread:.1%} of training",
                                spread >= DIGIT_SPREAD and distinct >= DIGIT_DISTINCT))
        em, lg, ed = (n[f"size_{k}_largest_share"] for k in ("exact_match", "log_likelihood", "edit_distance"))
        if em is None or lg is None or ed is None:
            checks.append(Check("d", "a metric did not change across widths", None))
        else:
            checks.append(Check("d", f"largest step between neighbouring widths ({n['widths']}): exact match {em:.0%} of its range, "
                                     f"log-likelihood {lg:.0%}, edit distance {ed:.0%}",
                                em >= SIZE_JUMP and em >= SIZE_RATIO * max(lg, ed)))
        return checks


EMERGENCE_SENTENCE = (
    "Exact match needs every digit right, so it tracks the product of the per-digit accuracies: it sits near 0 until "
    "the last digit is learned and then climbs fast, while edit distance and likelihood, which give credit digit by digit, "
    "improve from the start, a step at each digit's own transition. A jump in exact match, over steps or over sizes, is "
    "therefore weak evidence of one sudden new ability: here it is the last of several separate, earlier changes. "
    "Those per-digit changes are themselves abrupt (see the per-digit figures), so the metric explains the single late "
    "jump, not every discontinuity."
)


def _n_params(cond: Conditions) -> int:
    from seedbed.model import Transformer
    from seedbed.soil import resolve

    resolved, _ = resolve(cond)
    with torch.device("meta"):
        return Transformer(resolved.architecture).n_params()


def final(points: list[tuple[int, float]]) -> float:
    """A run's final value of a metric: its mean over the last tenth of the observations (one batch is noisy)."""
    values = [v for _, v in points]
    return float(np.mean(values[-max(1, len(values) // 10):]))


def rise(steps: list[int], values: np.ndarray, up: bool = True) -> tuple[int, int]:
    """The steps where a metric first made 10% and 90% of its total change (first value → best of the last tenth)."""
    v = np.asarray(values, dtype=float) * (1 if up else -1)
    tail = max(1, len(v) // 10)
    start, end = v[0], float(np.mean(v[-tail:]))
    change = end - start
    if change <= 0:
        return steps[-1], steps[-1]
    first = lambda q: next(s for s, x in zip(steps, v) if x >= start + q * change)
    return first(LO), first(HI)


def largest_share(values: list[float]) -> float | None:
    """The largest change between neighbours, as a share of the metric's whole range across them (None if flat).

    1.0: all of the change happens in one step (or the curve goes back and forth by its whole range);
    1 / (len - 1): the change is spread evenly."""
    span = max(values) - min(values) if values else 0.0
    if len(values) < 2 or span < 1e-9:
        return None
    return round(max(abs(float(b - a)) for a, b in itertools.pairwise(values)) / span, 4)


# ── the observer ────────────────────────────────────────────────────────────
class AnswerWatch:
    """Generate each held-out sum's answer greedily from `a+b=`, and score the true answer under teacher forcing.

    `watch/exact_match` (every digit right), `watch/edit_distance` (Levenshtein, in tokens,
    between the generated and the true answer), `watch/digit{place}_accuracy` (generated
    digit right, given the model's own earlier digits); `watch/log_likelihood` (mean log-prob
    of a true answer digit), `watch/log_likelihood_total` (summed over the answer) and
    `watch/digit{place}_log_likelihood`. n + 2 forward passes of a short batch.
    """

    def __init__(self, soil, size: int = WATCH_SIZE) -> None:
        batch = soil.eval_batch(WATCH_INDEX, size)
        self.soil, self.tokens = soil, batch.tokens
        self.prompt_len = soil.answer_from + 1  # a + b =
        self.places = [soil.digit_place(k) for k in range(self.tokens.shape[1] - self.prompt_len)]

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        device = next(model.parameters()).device
        tokens = self.tokens.to(device)
        truth = tokens[:, self.prompt_len:]
        with evaluating(model):
            logp = F.log_softmax(model(tokens[:, :-1]).float(), dim=-1)[:, self.prompt_len - 1:]
            true_logp = logp.gather(-1, truth.unsqueeze(-1)).squeeze(-1)  # [batch, n + 1]
            generated = greedy(model, tokens[:, : self.prompt_len], truth.shape[1])
        right = generated == truth
        out = {
            "watch/exact_match": float(right.all(dim=1).float().mean()),
            "watch/edit_distance": float(edit_distance(generated, truth).float().mean()),
            "watch/log_likelihood": float(true_logp.mean()),
            "watch/log_likelihood_total": float(true_logp.sum(dim=1).mean()),
        }
        for k, place in enumerate(self.places):
            out[f"watch/digit{place}_accuracy"] = float(right[:, k].float().mean())
            out[f"watch/digit{place}_log_likelihood"] = float(true_logp[:, k].mean())
        return out


def greedy(model: nn.Module, prompt: Tensor, n: int) -> Tensor:
    """The n tokens the model writes after `prompt`, each the argmax given everything before it."""
    seq = prompt
    for _ in range(n):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompt.shape[1]:]


def edit_distance(a: Tensor, b: Tensor) -> Tensor:
    """Levenshtein distance between each row of `a` and the same row of `b` (token sequences), batched."""
    rows, la, lb = a.shape[0], a.shape[1], b.shape[1]
    prev = torch.arange(lb + 1, device=a.device).expand(rows, -1).clone()
    for i in range(1, la + 1):
        cur = torch.empty_like(prev)
        cur[:, 0] = i
        for j in range(1, lb + 1):
            sub = prev[:, j - 1] + (a[:, i - 1] != b[:, j - 1]).long()
            cur[:, j] = torch.minimum(torch.minimum(prev[:, j] + 1, cur[:, j - 1] + 1), sub)
        prev = cur
    return prev[:, lb]
