"""Trial: a next-token predictor grows, abruptly, a two-head circuit that copies from context.

Olsson et al. 2022 ("In-context Learning and Induction Heads", arXiv 2209.11895) and
Elhage et al. 2021 ("A Mathematical Framework for Transformer Circuits"). Conditions:
a 2-layer attention-only transformer on `repeated-blocks` (random blocks of varying
length, repeated), so that the only way to predict the repeats is to find the earlier
copy by content. Nothing in the conditions mentions copying.

Read top to bottom: the claim, the predictions (thresholds fixed here, before any
run), the conditions per scale, what is measured, and how each prediction is judged.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from seedbed.conditions import Conditions, parse
from seedbed.read import load
from seedbed.read.ablate import Head, ablate
from seedbed.read.scores import composition_baseline, composition_scores, pattern_scores, patterns
from seedbed.run import Run
from seedbed.trials.base import Check, Evidence, Prediction, Trial, register
from seedbed.watch import transition

SCORE = 0.4  # an induction / previous-token head: score above this (the same bar as `seedbed read`)
WINDOW = 0.20  # (a) the transition window, as a share of training
RISE_NATS = 1.0  # (d) ablating the induction heads raises the repeated-half loss by more than this
OUTSIDE_SHARE = 0.25  # (d) … and ablating any head outside the circuit by less than this share of it
RANDOM_QUANTILE = 0.99  # (c) K-composition above this quantile of random head pairs
CONTROL_SCORE = 0.2  # (e) no head of the 1-layer control reaches this induction score
CONTROL_GAP = 1.0  # (e) … and its final repeated-half loss stays this many nats above the 2-layer model's


@register
class Induction(Trial):
    name = "induction"
    claim = (
        "A transformer trained only to predict the next token grows, abruptly, an induction circuit — "
        "a previous-token head feeding an induction head — that nobody wrote, and it can be found and checked causally."
    )
    source = "Olsson et al. 2022, In-context Learning and Induction Heads (arXiv 2209.11895); Elhage et al. 2021, A Mathematical Framework for Transformer Circuits"
    predictions = [
        Prediction("a", "the loss on the repeated half falls abruptly: the change-point detector places the transition in a short window",
                   f"window < {WINDOW:.0%} of training"),
        Prediction("b", "at the same time, a layer-1 head's induction score and a layer-0 head's previous-token score pass the bar",
                   f"both first exceed {SCORE} within the window widened by half its length on each side"),
        Prediction("c", "the layer-0 previous-token head K-composes with the layer-1 induction head",
                   f"K-composition above the {RANDOM_QUANTILE:.0%} quantile of random head pairs"),
        Prediction("d", "ablating the induction heads breaks copying; ablating a head outside the circuit barely matters",
                   f"mean-ablating every layer-1 head with induction score > {SCORE} raises the repeated-half loss by > {RISE_NATS:g} nat; "
                   f"any one head that is neither induction nor previous-token (> {SCORE}) raises it by < {OUTSIDE_SHARE:.0%} of that"),
        Prediction("e", "control: a 1-layer model under the same conditions forms no induction head and keeps a high repeated-half loss",
                   f"every induction score < {CONTROL_SCORE}; final repeated-half loss > 2-layer model's + {CONTROL_GAP:g} nat"),
    ]

    # ── conditions ──────────────────────────────────────────────────────────
    def conditions(self, scale: str, seed: int) -> dict[str, Conditions]:
        soil = {"kind": "repeated-blocks", "vocab_size": 64, "block_min": 8, "block_max": 32, "prefix_max": 16}
        # d_model 128 at small: at 64, 3 of 10 pilot seeds (1000-1009) settled on a copy-from-context shortcut with no
        # previous-token head and never grew an induction head in 3,000 steps; at 128 the failing ones grew one by step 350
        arch = {"n_layers": 2, "d_model": 128, "n_heads": 4, "attn_only": True, "n_ctx": 64}
        sched = {"steps": 3000, "batch_size": 32, "warmup_steps": 100, "decay": "cosine", "eval_every": 250}
        if scale == "tiny":  # seconds: for the tests
            soil.update(block_min=6, block_max=24, prefix_max=12)
            arch.update(d_model=64, n_ctx=48)
            sched.update(steps=800, eval_every=200)
        elif scale == "full":  # Olsson et al.'s small attention-only models: wider, longer contexts, a GPU
            soil.update(vocab_size=512, block_min=16, block_max=128, prefix_max=64)
            arch.update(d_model=256, n_heads=8, n_ctx=256)
            sched.update(steps=20000, batch_size=64, warmup_steps=500, eval_every=500)
        main = {
            "name": "induction", "seed": seed, "soil": soil, "architecture": arch,
            "objective": {"loss_on": "all"},
            "optimizer": {"lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.1, "grad_clip": 1.0},
            "schedule": sched, "checkpoints": {"log_until": 512, "every": sched["steps"] // 6},
        }
        control = {**main, "name": "induction-control", "architecture": {**arch, "n_layers": 1}}
        return {"main": parse(main), "control": parse(control)}

    # ── measurements ────────────────────────────────────────────────────────
    def measure(self, path: Path) -> Evidence:
        ev = Evidence()
        n = ev.numbers
        run = Run.open(path / "main", readonly=True)
        total = run.conditions.schedule.steps
        n["steps"] = total
        loss = run.metric("watch/answer_loss")
        control_run = Run.open(path / "control", readonly=True)
        control_loss = control_run.metric("watch/answer_loss")

        # (a) the transition in the repeated-half loss
        t = transition("watch/answer_loss", [s for s, _ in loss], [v for _, v in loss])
        if t is not None:
            ev.emergences.append({**t.as_dict(), "label": "loss on the repeated half"})
            n.update(transition_start=t.start, transition_end=t.end, transition_window_share=round((t.end - t.start) / total, 4),
                     repeated_loss_before=round(t.before, 4), repeated_loss_after=round(t.after, 4), transition_sharpness=round(t.sharpness, 2))
        n["repeated_loss_final"] = round(loss[-1][1], 4)

        # (b) when the head scores first pass the bar
        series = {name: run.metric(name) for name in run.metric_names() if name.startswith(("watch/induction/L1", "watch/previous_token/L0"))}
        for kind, key in (("induction/L1", "first_induction_step"), ("previous_token/L0", "first_previous_token_step")):
            crossings = [next((s for s, v in pts if v > SCORE), None) for name, pts in series.items() if f"/{kind}" in name]
            crossings = [c for c in crossings if c is not None]
            n[key] = min(crossings) if crossings else None
        for name, pts in series.items():
            e = transition(name, [s for s, _ in pts], [v for _, v in pts])
            if e is not None and abs(e.size) >= 0.1:
                ev.emergences.append({**e.as_dict(), "label": name.removeprefix("watch/").replace("_", "-").replace("/", " score of ", 1)})

        # the final model: scores, composition, ablation
        grown = load(path / "main")
        model, soil = grown.model, grown.soil
        scores = pattern_scores(model, bos=soil.bos)
        ind, prev = scores["induction"], scores["previous_token"]
        for l in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                n[f"induction_L{l}H{h}"] = round(float(ind[l, h]), 4)
                n[f"previous_token_L{l}H{h}"] = round(float(prev[l, h]), 4)
        top_ind = (1, int(ind[1].argmax()))
        top_prev = (0, int(prev[0].argmax()))
        n["top_induction_head"] = f"L1H{top_ind[1]}"
        n["top_previous_token_head"] = f"L0H{top_prev[1]}"

        # (c) K-composition of the top pair against random head pairs
        k = composition_scores(model, "k")
        n["k_composition_top_pair"] = round(float(k[0, top_prev[1], 1, top_ind[1]]), 4)
        n["k_composition_random_q99"] = round(composition_baseline(model, "k", samples=1024, quantile=RANDOM_QUANTILE), 4)
        n["k_composition_random_mean"] = round(composition_baseline(model, "k", samples=1024), 4)

        # (d) mean-ablation on held-out sequences, loss on the repeated half
        batch, reference = soil.eval_batch(20_000, 256), soil.eval_batch(20_001, 256).inputs

        def repeated_loss(heads: list[Head]) -> float:
            logits = ablate(model, batch.inputs, heads, "mean", reference=reference)
            per = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="none").view(batch.targets.shape)
            return float(per[batch.answer].mean())

        base = repeated_loss([])
        induction_heads = [Head(1, h) for h in range(model.cfg.n_heads) if ind[1, h] > SCORE]
        circuit = {(hd.layer, hd.head) for hd in induction_heads} | {(0, h) for h in range(model.cfg.n_heads) if prev[0, h] > SCORE}
        n["repeated_loss_unablated"] = round(base, 4)
        n["induction_heads"] = ", ".join(f"L{hd.layer}H{hd.head}" for hd in induction_heads) or "none"
        n["ablate_induction_heads_rise"] = round(repeated_loss(induction_heads) - base, 4) if induction_heads else None
        bars = []
        outside = []
        for l in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                rise = repeated_loss([Head(l, h)]) - base
                n[f"ablate_L{l}H{h}_rise"] = round(rise, 4)
                bars.append({"label": f"L{l}H{h}", "value": rise, "highlight": (l, h) in circuit})
                if (l, h) not in circuit:
                    outside.append(rise)
        n["outside_heads"] = len(outside)
        n["ablate_outside_max_rise"] = round(max(outside), 4) if outside else None
        if induction_heads:
            bars.insert(0, {"label": "all induction heads", "value": n["ablate_induction_heads_rise"], "highlight": True})

        # (e) the 1-layer control
        control = load(path / "control").model
        c_ind = pattern_scores(control, bos=soil.bos)["induction"]
        n["control_max_induction"] = round(float(c_ind.max()), 4)
        n["control_repeated_loss_final"] = round(control_loss[-1][1], 4)

        # figures
        spans = [{"from": t.start, "to": t.end, "label": "transition"}] if t else []
        ev.figures.append({
            "kind": "lines", "id": "loss", "main": True, "title": "Loss on the repeated half, held-out", "x_label": "step", "y_label": "nats",
            "series": [{"label": "2-layer model", "x": [s for s, _ in loss], "y": [v for _, v in loss]},
                       {"label": "1-layer control", "x": [s for s, _ in control_loss], "y": [v for _, v in control_loss]}],
            "spans": spans,
        })
        ev.figures.append({
            "kind": "lines", "id": "head-scores", "title": "Head scores over training: induction (layer 1) and previous-token (layer 0)",
            "x_label": "step", "y_label": "score",
            "series": [{"label": name.removeprefix("watch/").replace("_", "-"), "x": [s for s, _ in pts], "y": [v for _, v in pts]} for name, pts in sorted(series.items())],
            "spans": spans, "hlines": [{"y": SCORE, "label": f"bar {SCORE}"}],
        })
        example = soil.eval_batch(0, 1).inputs[:, :40]
        pats = patterns(model, example)
        labels = [str(int(x)) for x in example[0]]
        for (l, h), what in ((top_prev, "previous-token"), (top_ind, "induction")):
            ev.figures.append({
                "kind": "heatmap", "id": f"pattern-L{l}H{h}", "title": f"Attention of L{l}H{h} ({what} head) on a held-out sequence",
                "x_labels": labels, "y_labels": labels, "values": pats[l, 0, h].tolist(), "x_label": "key", "y_label": "query",
            })
        ev.figures.append({
            "kind": "bars", "id": "ablation", "title": "Rise in repeated-half loss when a head is mean-ablated (circuit heads highlighted)",
            "y_label": "nats", "bars": bars, "highlight_label": f"in the circuit (induction or previous-token score > {SCORE})",
            "other_label": "outside the circuit",
            "hlines": [{"y": RISE_NATS, "label": f"(d) all induction heads: more than {RISE_NATS:g} nat"}]
            + ([{"y": OUTSIDE_SHARE * n["ablate_induction_heads_rise"], "label": f"(d) each head outside: less than {OUTSIDE_SHARE:.0%} of that"}]
               if induction_heads else []),
        })
        run.close()
        control_run.close()
        return ev

    # ── the verdict, from the predictions and the evidence only ─────────────
    def judge(self, ev: Evidence) -> list[Check]:
        n = ev.numbers
        checks = []
        if "transition_start" in n:
            share = n["transition_window_share"]
            checks.append(Check("a", f"repeated-half loss fell {n['repeated_loss_before']:.2f} → {n['repeated_loss_after']:.2f} nats in steps "
                                     f"{n['transition_start']:,}–{n['transition_end']:,}: {share:.1%} of training", share < WINDOW))
        else:
            checks.append(Check("a", "the detector found no abrupt transition in the repeated-half loss", False))

        fi, fp = n["first_induction_step"], n["first_previous_token_step"]
        if "transition_start" not in n:
            checks.append(Check("b", "no transition to compare with", None if fi and fp else False))
        elif fi is None or fp is None:
            missing = " and ".join(w for w, s in (("induction", fi), ("previous-token", fp)) if s is None)
            checks.append(Check("b", f"no {missing} head ever passed {SCORE}", False))
        else:
            a, b = n["transition_start"], n["transition_end"]
            lo, hi = a - (b - a) / 2, b + (b - a) / 2
            checks.append(Check("b", f"induction > {SCORE} first at step {fi:,}, previous-token at step {fp:,}; window widened: {lo:,.0f}–{hi:,.0f}",
                                lo <= fi <= hi and lo <= fp <= hi))

        kc, q = n["k_composition_top_pair"], n["k_composition_random_q99"]
        pair = f"{n['top_previous_token_head']} → {n['top_induction_head']}"
        if n[f"induction_{n['top_induction_head']}"] <= SCORE or n[f"previous_token_{n['top_previous_token_head']}"] <= SCORE:
            checks.append(Check("c", f"no previous-token → induction pair passes {SCORE} to compare ({pair}: K-composition {kc:.3f})", False))
        else:
            checks.append(Check("c", f"{pair} K-composition {kc:.3f}; random pairs' 99% quantile {q:.3f} (mean {n['k_composition_random_mean']:.3f})", kc > q))

        rise = n["ablate_induction_heads_rise"]
        if rise is None:
            checks.append(Check("d", "no layer-1 head has an induction score above the bar: nothing to ablate", False))
        else:
            out_max = n["ablate_outside_max_rise"]
            if out_max is None:
                checks.append(Check("d", f"ablating {n['induction_heads']}: +{rise:.2f} nats; no head is outside the circuit", rise > RISE_NATS))
            else:
                checks.append(Check("d", f"ablating {n['induction_heads']}: +{rise:.2f} nats; worst of {n['outside_heads']} heads outside the circuit: +{out_max:.2f}",
                                    rise > RISE_NATS and out_max < OUTSIDE_SHARE * rise))

        ci, cl, ml = n["control_max_induction"], n["control_repeated_loss_final"], n["repeated_loss_final"]
        checks.append(Check("e", f"1-layer control: best induction score {ci:.2f}, final repeated-half loss {cl:.2f} vs {ml:.2f} nats",
                            ci < CONTROL_SCORE and cl > ml + CONTROL_GAP))
        return checks
