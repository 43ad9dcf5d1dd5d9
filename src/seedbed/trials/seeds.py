"""Trial: people choose the conditions; the seed chooses the mechanism.

The same conditions, grown under N seeds, for two capabilities whose mechanism we can
read: the induction circuit (the `induction` trial's 2-layer attention-only model) and
the grokking circuit (the `grokking` trial's modular-addition model). The behaviour is
expected to agree across seeds (every seed forms induction heads, every seed groks),
while the details that gradient descent settled — which head became the induction
head, when, and which Fourier frequencies the modular-addition model uses — differ.
One trial grows `n` consecutive seeds from its `--seed` (`--option n=N`; default 2 at
tiny, 5 at small, 10 at full); its runs other than main grow in parallel processes, one per
core. With `--seeds K` the trial is repeated K times on disjoint blocks of seeds (from
`--seed`, `--seed + n`, …), all runs of all blocks in one pool of processes.

Read top to bottom: the claim, the predictions (thresholds fixed here, before any
run), the conditions, what is measured per run, and the verdict.
"""

from __future__ import annotations

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
MIN_DISTINCT_HEADS = 2  # (b) at least this many different heads are the top induction head across seeds
MIN_ONSET_SPREAD = 0.10  # (c) onset steps spread (max − min) by at least this share of their median
MIN_DISTINCT_KEYS = 2  # (d) at least this many different sets of key frequencies across seeds


@register
class Seeds(Trial):
    name = "seeds"
    claim = (
        "Under the same conditions, every seed grows the same behaviour — induction heads, grokking — "
        "but the seed decides the mechanism's details: which head, when, and which frequencies."
    )
    source = ("Olsson et al. 2022 (arXiv 2209.11895) and Nanda et al. 2023 (arXiv 2301.05217), both of which report "
              "seed-dependent heads and key frequencies; here measured across seeds")
    predictions = [
        Prediction("a", "the behaviour agrees: every seed forms an induction head and every seed groks",
                   f"every induction seed has a layer-1 head with induction score > {SCORE}; every grokking seed reaches test accuracy > {GROKKED:.0%}"),
        Prediction("b", "which head becomes the induction head differs between seeds",
                   f"at least {MIN_DISTINCT_HEADS} different top induction heads across the seeds"),
        Prediction("c", "the onset step differs between seeds",
                   f"induction and grokking onsets each spread by ≥ {MIN_ONSET_SPREAD:.0%} of their median (max − min)"),
        Prediction("d", "the key frequencies of the modular-addition model differ between seeds",
                   f"at least {MIN_DISTINCT_KEYS} different sets of key frequencies across the seeds"),
    ]

    watch_series = {**DEFAULT_SERIES, **Grokking.watch_series}
    options = {"n": Option("how many seeds one trial compares (default 2 at tiny, 5 at small, 10 at full)", minimum=2)}

    def seeds_per_trial(self, scale: str) -> int:
        return self.chosen["n"] or N_SEEDS[scale]

    def seeds(self, scale: str, seed: int) -> list[int]:
        return list(range(seed, seed + self.seeds_per_trial(scale)))

    # ── conditions: the same recipe, N seeds ────────────────────────────────
    def conditions(self, scale: str, seed: int) -> dict[str, Conditions]:
        runs: dict[str, Conditions] = {}
        for s in self.seeds(scale, seed):
            runs[MAIN if s == seed else f"grokking-seed{s}"] = parse(grokking_conditions(scale, s))
        for s in self.seeds(scale, seed):
            runs[f"induction-seed{s}"] = Induction().conditions(scale, s)["main"]
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
        rows, per_seed = [], []
        for p in grokking:
            m = measure_run(p).numbers
            s = m["seed"]
            checks = Grokking().judge(Evidence(numbers=m))  # the grokking trial's own predictions, on this seed
            per_seed.append({"kind": "grokking", "seed": s, "onset": m["grokked_step"], "keys": m["key_frequencies"],
                             "grokked": m["grokked_step"] is not None, "test_loss": m["test_loss_final"], "train_loss": m["train_loss_final"],
                             "memorised": m["memorised_step"], "grokking_verdict": verdict(checks),
                             "grokking_failed": [c.id for c in checks if c.held is False]})
        for p in induction:
            per_seed.append(_induction_numbers(p))
        n["runs"] = per_seed
        g = [r for r in per_seed if r["kind"] == "grokking"]
        i = [r for r in per_seed if r["kind"] == "induction"]
        n["grokking_seeds"], n["induction_seeds"] = len(g), len(i)
        n["grokked_seeds"] = sum(r["grokked"] for r in g)
        n["grokking_trial_held_seeds"] = sum(r["grokking_verdict"] == HELD for r in g)
        n["induction_head_seeds"] = sum(r["top_score"] > SCORE for r in i)
        n["induction_heads"] = [r["head"] for r in i]
        n["distinct_induction_heads"] = len({r["head"] for r in i if r["top_score"] > SCORE})
        n["key_frequency_sets"] = [r["keys"] for r in g]
        n["distinct_key_sets"] = len({tuple(sorted(r["keys"])) for r in g if r["grokked"]})
        n["shared_key_frequencies"] = sorted(set.intersection(*(set(r["keys"]) for r in g))) if g else []
        for kind, runs in (("induction", i), ("grokking", g)):
            onsets = [r["onset"] for r in runs if r["onset"] is not None]
            n[f"{kind}_onsets"] = onsets
            n[f"{kind}_onset_spread"] = round((max(onsets) - min(onsets)) / statistics.median(onsets), 4) if len(onsets) >= 2 else None

        for r in per_seed:
            if r["kind"] == "grokking":
                failed = f" (not {', '.join(r['grokking_failed'])})" if r["grokking_failed"] else ""
                rows.append(["grokking", r["seed"], r["onset"] if r["onset"] is not None else "never", f"memorised at {r['memorised']}",
                             ", ".join(map(str, r["keys"])) or "none", f"{r['train_loss']:.3g} / {r['test_loss']:.3g}", r["grokking_verdict"] + failed])
            else:
                rows.append(["induction", r["seed"], r["onset"] if r["onset"] is not None else "none", f"{r['head']} ({r['top_score']:.2f})",
                             "–", f"{r['train_loss']:.3g} / {r['answer_loss']:.3g}", "–"])
        ev.figures.append({
            "kind": "table", "id": "seeds", "main": True, "title": "Per seed: onset step, the mechanism's details, final losses",
            "columns": ["capability", "seed", "onset step", "induction head / memorised", "key frequencies", "final loss (train / held-out)", "grokking trial"],
            "rows": rows,
        })
        for kind, what in (("induction", "start of the repeated-half loss drop"), ("grokking", "first step with test accuracy > 95%")):
            runs = [r for r in per_seed if r["kind"] == kind]
            ev.figures.append({
                "kind": "bars", "id": f"{kind}-onsets", "title": f"{kind.capitalize()} onset per seed ({what})", "x_label": "seed", "y_label": "step",
                "bars": [{"label": f"seed {r['seed']}", "value": r["onset"] if r["onset"] is not None else float("nan")} for r in runs],
            })
        if g:
            keys = sorted({k for r in g for k in r["keys"]})
            ev.figures.append({
                "kind": "heatmap", "id": "key-frequencies", "title": "Key frequencies per grokking seed (1 = key)",
                "x_labels": [str(k) for k in keys], "y_labels": [f"seed {r['seed']}" for r in g],
                "values": [[1.0 if k in r["keys"] else 0.0 for k in keys] for r in g], "x_label": "frequency k", "y_label": "seed",
            })
        return ev

    # ── the verdict ─────────────────────────────────────────────────────────
    def judge(self, ev: Evidence) -> list[Check]:
        n = ev.numbers
        checks = []
        ig, gg = n["induction_head_seeds"], n["grokked_seeds"]
        checks.append(Check("a", f"induction head formed in {ig} of {n['induction_seeds']} seeds; grokked in {gg} of {n['grokking_seeds']} seeds "
                                 f"(every grokking prediction held in {n.get('grokking_trial_held_seeds', '?')})",
                            ig == n["induction_seeds"] and gg == n["grokking_seeds"] and ig > 0 and gg > 0))
        heads = n["induction_heads"]
        checks.append(Check("b", f"top induction heads by seed: {', '.join(heads) or 'none'} ({n['distinct_induction_heads']} distinct)",
                            n["distinct_induction_heads"] >= MIN_DISTINCT_HEADS))
        spreads = {k: n[f"{k}_onset_spread"] for k in ("induction", "grokking")}
        shown = "; ".join(f"{k} onsets {', '.join(f'{s:,}' for s in n[f'{k}_onsets']) or 'none'}"
                          + (f" (spread {v:.0%} of the median)" if v is not None else "") for k, v in spreads.items())
        if any(v is None for v in spreads.values()):
            checks.append(Check("c", shown + ": too few onsets to compare", None))
        else:
            checks.append(Check("c", shown, all(v >= MIN_ONSET_SPREAD for v in spreads.values())))
        sets = "; ".join("{" + ", ".join(map(str, k)) + "}" for k in n["key_frequency_sets"])
        shared = ", ".join(map(str, n["shared_key_frequencies"])) or "none"
        checks.append(Check("d", f"key frequencies by seed: {sets} ({n['distinct_key_sets']} distinct sets among the grokked; shared by all: {shared})",
                            n["distinct_key_sets"] >= MIN_DISTINCT_KEYS))
        return checks


def _seed_of(p: Path) -> int:
    return int(p.name.rsplit("seed", 1)[1])


def _induction_numbers(path: Path) -> dict:
    """Onset (start of the repeated-half loss drop), the top layer-1 induction head, final losses."""
    run = Run.open(path, readonly=True)
    loss = run.metric("watch/answer_loss")
    t = transition("watch/answer_loss", [s for s, _ in loss], [v for _, v in loss])
    train = run.last_metric("train/loss")
    seed = run.conditions.seed
    run.close()
    grown = load(path)
    ind = pattern_scores(grown.model, bos=grown.soil.bos)["induction"]
    top = int(ind[-1].argmax())
    return {"kind": "induction", "seed": seed, "onset": t.start if t else None, "head": f"L{ind.shape[0] - 1}H{top}",
            "top_score": round(float(ind[-1, top]), 4), "answer_loss": loss[-1][1], "train_loss": train}
