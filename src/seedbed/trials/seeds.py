"""Trial: people choose the conditions; the seed chooses the mechanism.

The same conditions *and the same data*, grown under N seeds, for two capabilities whose
mechanism we can read: the induction circuit (the `induction` trial's 2-layer attention-only
model) and the grokking circuit (the `grokking` trial's modular-addition model). Every run of
a capability shares the soil's seed (`data_seed` = the first seed: the same training split and
the same batches in the same order), so the seeds differ in their initial weights alone. The
behaviour is expected to agree across seeds, while the details that gradient descent settled
from those weights — when the capability appears, and which Fourier frequencies the
modular-addition model uses — differ.

Each prediction is stated against a null: what the alternative ("the conditions and the data
decide the mechanism"), chance or symmetry alone would give; a prediction that symmetry would
pass is no test. Which head becomes the top induction head is *not* a prediction: the heads of a
layer are interchangeable at initialisation, so its index is uniform whatever growth does. It is
reported, as structural.

One trial grows `n` consecutive seeds from its `--seed` (`--option n=N`; default 2 at tiny, 5 at
small, 10 at full); its runs other than main grow in parallel processes, one per core. With
`--seeds K` the trial is repeated K times on disjoint blocks of seeds (from `--seed`,
`--seed + n`, …), each block on its own data (its first seed), all runs in one pool.

Read top to bottom: the claim, the predictions (thresholds fixed here, before any run), the
conditions, what is measured per run, and the verdict.
"""

from __future__ import annotations

import itertools
import os
import statistics
from pathlib import Path

from seedbed.conditions import Conditions, parse
from seedbed.read import load
from seedbed.read.scores import pattern_scores
from seedbed.run import Run
from seedbed.trials.base import (
    HELD,
    MAIN,
    Check,
    Evidence,
    Option,
    Prediction,
    Trial,
    register,
    verdict,
)
from seedbed.trials.grokking import (
    GROKKED,
    Grokking,
    ModularProgress,
    grokking_conditions,
    measure_run,
)
from seedbed.trials.induction import SCORE, Induction
from seedbed.watch import default_observers, transition
from seedbed.watch.live import DEFAULT_SERIES
from seedbed.watch.observers import weight_norm

N_SEEDS = {"tiny": 2, "small": 5, "full": 10}
MIN_ONSET_INTERVALS = 3  # (b) onsets spread (max − min) by at least this many observation intervals …
MIN_ONSET_SPREAD = 0.10  # (b) … and by at least this share of their median
MIN_DISTINCT_KEYS = 2  # (c) at least this many different sets of key frequencies among the seeds that grokked
ONSET_SERIES = {"induction": "watch/answer_loss", "grokking": "watch/test_accuracy"}  # what each onset is read from
STRUCTURAL_HEAD = ("the top induction head's index is not a prediction: a layer's heads are interchangeable at initialisation, "
                   "so it is uniform over them whatever growth does")


@register
class Seeds(Trial):
    name = "seeds"
    claim = (
        "Under the same conditions and the same data, every seed grows the same behaviour — induction heads, grokking — "
        "but the seed, through the initial weights alone, decides the mechanism's details: when it forms and which frequencies it uses."
    )
    source = ("Olsson et al. 2022 (arXiv 2209.11895) and Nanda et al. 2023 (arXiv 2301.05217), both of which report "
              "seed-dependent heads and key frequencies; here measured across seeds that share their data")
    predictions = [
        Prediction("a", "the behaviour agrees: every seed forms an induction head and every seed groks",
                   f"every induction seed has a layer-1 head with induction score > {SCORE}; "
                   f"every grokking seed reaches test accuracy > {GROKKED:.0%}",
                   null="the seed decides whether the capability grows at all: some seed grows no induction head or never groks"),
        Prediction("b", "the initial weights alone move each capability's onset by more than the measurement can resolve",
                   f"induction and grokking onsets each spread (max − min) by ≥ {MIN_ONSET_INTERVALS} observation intervals "
                   f"and by ≥ {MIN_ONSET_SPREAD:.0%} of their median",
                   null="the conditions and the data decide the timing: each capability's onsets lie within about one "
                        "observation interval"),
        Prediction("c", "with the training split held fixed, the initial weights alone choose the key frequencies",
                   f"≥ {MIN_DISTINCT_KEYS} different sets of key frequencies among the seeds that grokked",
                   null="the training split decides the frequencies (a fixed split is not invariant under multiplying by a unit "
                        "mod p, the symmetry that makes every frequency equally likely a priori): every grokked seed has the same set"),
    ]

    watch_series = {**DEFAULT_SERIES, **Grokking.watch_series}
    options = {"n": Option("how many seeds one trial compares (default 2 at tiny, 5 at small, 10 at full)", minimum=2)}

    def seeds_per_trial(self, scale: str) -> int:
        return self.chosen["n"] or N_SEEDS[scale]

    def seeds(self, scale: str, seed: int) -> list[int]:
        return list(range(seed, seed + self.seeds_per_trial(scale)))

    # ── conditions: the same recipe and data, N seeds of initial weights ───
    def conditions(self, scale: str, seed: int) -> dict[str, Conditions]:
        """Every run's soil is seeded by `seed` (data_seed), so only the initial weights vary between runs."""
        runs: dict[str, Conditions] = {}
        for s in self.seeds(scale, seed):
            runs[MAIN if s == seed else f"grokking-seed{s}"] = parse({**grokking_conditions(scale, s), "data_seed": seed})
        for s in self.seeds(scale, seed):
            runs[f"induction-seed{s}"] = Induction().conditions(scale, s)["main"].model_copy(update={"data_seed": seed})
        return runs

    def workers(self) -> int:
        return max(2, min(os.cpu_count() or 1, 8))  # both cores on a laptop; at most 8

    def observers(self, model, soil) -> list:
        if soil.name == "modular-arithmetic":
            return [ModularProgress(soil), weight_norm]
        return default_observers(model, soil)

    # ── measurements ────────────────────────────────────────────────────────
    def measure(self, path: Path) -> Evidence:
        ev = Evidence()
        n = ev.numbers
        grokking = [path / MAIN] + sorted(path.glob("grokking-seed*"), key=_seed_of)  # the runner checked that every run is there
        induction = sorted(path.glob("induction-seed*"), key=_seed_of)
        per_seed = [_grokking_numbers(p) for p in grokking] + [_induction_numbers(p) for p in induction]
        n["runs"] = per_seed
        g = [r for r in per_seed if r["kind"] == "grokking"]
        i = [r for r in per_seed if r["kind"] == "induction"]
        n["data_seeds"] = sorted({r["data_seed"] for r in per_seed})  # one: every run shares its data
        n["grokking_seeds"], n["induction_seeds"] = len(g), len(i)
        n["grokked_seeds"] = sum(r["grokked"] for r in g)
        n["grokking_trial_held_seeds"] = sum(r["grokking_verdict"] == HELD for r in g)
        n["induction_head_seeds"] = sum(r["top_score"] > SCORE for r in i)
        n["induction_heads"] = [r["head"] for r in i]  # structural: reported, not judged
        n["distinct_induction_heads"] = len({r["head"] for r in i if r["top_score"] > SCORE})
        n["key_frequency_sets"] = [r["keys"] for r in g]
        n["distinct_key_sets"] = len({tuple(sorted(r["keys"])) for r in g if r["grokked"]})
        n["shared_key_frequencies"] = sorted(set.intersection(*(set(r["keys"]) for r in g))) if g else []
        for kind, runs in (("induction", i), ("grokking", g)):
            onsets = [r["onset"] for r in runs if r["onset"] is not None]
            n[f"{kind}_onsets"] = onsets
            n[f"{kind}_observation_interval"] = max((r["interval"] for r in runs), default=None)
            n[f"{kind}_onset_spread_steps"] = max(onsets) - min(onsets) if len(onsets) >= 2 else None
            n[f"{kind}_onset_spread"] = (round((max(onsets) - min(onsets)) / statistics.median(onsets), 4)
                                         if len(onsets) >= 2 and statistics.median(onsets) > 0 else None)
        _figures(ev, per_seed)
        return ev

    # ── the verdict ─────────────────────────────────────────────────────────
    def judge(self, ev: Evidence) -> list[Check]:
        n = ev.numbers
        ig, gg = n["induction_head_seeds"], n["grokked_seeds"]
        checks = [Check("a", f"induction head formed in {ig} of {n['induction_seeds']} seeds; grokked in {gg} of {n['grokking_seeds']} seeds "
                             f"(every grokking prediction held in {n.get('grokking_trial_held_seeds', '?')})",
                        ig == n["induction_seeds"] and gg == n["grokking_seeds"] and ig > 0 and gg > 0)]
        checks.append(_judge_onsets(n))
        sets = "; ".join("{" + ", ".join(map(str, k)) + "}" for k in n["key_frequency_sets"])
        shared = ", ".join(map(str, n["shared_key_frequencies"])) or "none"
        shown = f"key frequencies by seed: {sets} ({n['distinct_key_sets']} distinct sets among the {gg} grokked; shared by all: {shared})"
        checks.append(Check("c", shown + (": fewer than 2 seeds grokked" if gg < 2 else ""),
                            None if gg < 2 else n["distinct_key_sets"] >= MIN_DISTINCT_KEYS))
        return checks


def _judge_onsets(n: dict) -> Check:
    """(b): each capability's onsets spread by several observation intervals and a share of their median."""
    parts, held = [], []
    for kind in ("induction", "grokking"):
        onsets, steps, share, every = (n[f"{kind}_onsets"], n[f"{kind}_onset_spread_steps"], n[f"{kind}_onset_spread"],
                                       n[f"{kind}_observation_interval"])
        text = f"{kind} onsets {', '.join(f'{s:,}' for s in onsets) or 'none'}"
        if steps is None or share is None or not every:
            parts.append(text + " (too few to compare)")
            held.append(None)
            continue
        parts.append(text + f" (spread {steps:,} steps = {steps / every:.1f} observation intervals of {every:,}, {share:.0%} of the median)")
        held.append(steps >= MIN_ONSET_INTERVALS * every and share >= MIN_ONSET_SPREAD)
    result = False if False in held else None if None in held else True
    return Check("b", "; ".join(parts), result)


def _seed_of(p: Path) -> int:
    return int(p.name.rsplit("seed", 1)[1])


def _interval(points: list[tuple[int, float]]) -> int:
    """The measurement's granularity: the widest gap between consecutive observations (0 with fewer than two)."""
    return max((b[0] - a[0] for a, b in itertools.pairwise(points)), default=0)


def _grokking_numbers(path: Path) -> dict:
    """Onset (first step with test accuracy > 95%), key frequencies and the grokking trial's own verdict on this seed."""
    m = measure_run(path).numbers
    checks = Grokking().judge(Evidence(numbers=m))  # the grokking trial's own predictions, on this seed
    run = Run.open(path, readonly=True)
    points, cond = run.metric(ONSET_SERIES["grokking"]), run.conditions
    run.close()
    return {"kind": "grokking", "seed": m["seed"], "data_seed": _data_seed(cond), "onset": m["grokked_step"], "interval": _interval(points),
            "keys": m["key_frequencies"], "grokked": m["grokked_step"] is not None, "test_loss": m["test_loss_final"],
            "train_loss": m["train_loss_final"], "memorised": m["memorised_step"], "grokking_verdict": verdict(checks),
            "grokking_failed": [c.id for c in checks if c.held is False]}


def _induction_numbers(path: Path) -> dict:
    """Onset (start of the repeated-half loss drop), the top layer-1 induction head, final losses."""
    run = Run.open(path, readonly=True)
    loss = run.metric(ONSET_SERIES["induction"])
    train = run.last_metric("train/loss")
    cond = run.conditions
    run.close()
    t = transition(ONSET_SERIES["induction"], [s for s, _ in loss], [v for _, v in loss])
    grown = load(path)
    ind = pattern_scores(grown.model, bos=grown.soil.bos)["induction"]
    top = int(ind[-1].argmax())
    return {"kind": "induction", "seed": cond.seed, "data_seed": _data_seed(cond), "onset": t.start if t else None,
            "interval": _interval(loss), "head": f"L{ind.shape[0] - 1}H{top}", "top_score": round(float(ind[-1, top]), 4),
            "answer_loss": loss[-1][1], "train_loss": train}


def _data_seed(cond: Conditions) -> int:
    return cond.seed if cond.data_seed is None else cond.data_seed


def _figures(ev: Evidence, per_seed: list[dict]) -> None:
    """The per-seed table, each capability's onsets, and the key frequencies per grokking seed."""
    rows = []
    for r in per_seed:
        if r["kind"] == "grokking":
            failed = f" (not {', '.join(r['grokking_failed'])})" if r["grokking_failed"] else ""
            rows.append(["grokking", r["seed"], r["onset"] if r["onset"] is not None else "never", f"memorised at {r['memorised']}",
                         ", ".join(map(str, r["keys"])) or "none", f"{r['train_loss']:.3g} / {r['test_loss']:.3g}", r["grokking_verdict"] + failed])
        else:
            rows.append(["induction", r["seed"], r["onset"] if r["onset"] is not None else "none", f"{r['head']} ({r['top_score']:.2f})",
                         "–", f"{r['train_loss']:.3g} / {r['answer_loss']:.3g}", "–"])
    data = ", ".join(str(s) for s in sorted({r["data_seed"] for r in per_seed}))
    ev.figures.append({
        "kind": "table", "id": "seeds", "main": True, "title": "Per seed: onset step, the mechanism's details, final losses",
        "columns": ["capability", "seed", "onset step", "top induction head (structural) / memorised", "key frequencies",
                    "final loss (train / held-out)", "grokking trial"],
        "rows": rows,
        "caption": f"Every run shares its data (data_seed {data}); only the initial weights differ. Structural: {STRUCTURAL_HEAD}.",
    })
    for kind, what in (("induction", "start of the repeated-half loss drop"), ("grokking", "first step with test accuracy > 95%")):
        runs = [r for r in per_seed if r["kind"] == kind]
        ev.figures.append({
            "kind": "bars", "id": f"{kind}-onsets", "title": f"{kind.capitalize()} onset per seed ({what})", "x_label": "seed", "y_label": "step",
            "bars": [{"label": f"seed {r['seed']}", "value": r["onset"] if r["onset"] is not None else float("nan")} for r in runs],
        })
    g = [r for r in per_seed if r["kind"] == "grokking"]
    if g:
        keys = sorted({k for r in g for k in r["keys"]})
        ev.figures.append({
            "kind": "heatmap", "id": "key-frequencies", "title": "Key frequencies per grokking seed (1 = key)",
            "x_labels": [str(k) for k in keys], "y_labels": [f"seed {r['seed']}" for r in g],
            "values": [[1.0 if k in r["keys"] else 0.0 for k in keys] for r in g], "x_label": "frequency k", "y_label": "seed",
        })
