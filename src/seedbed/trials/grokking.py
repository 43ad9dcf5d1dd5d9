"""Trial: a network memorises its training set, then, long after, generalises, by a Fourier algorithm nobody wrote.

Power et al. 2022 ("Grokking: Generalization Beyond Overfitting on Small Algorithmic
Datasets", arXiv 2201.02177) and Nanda et al. 2023 ("Progress measures for grokking via
mechanistic interpretability", arXiv 2301.05217). Conditions: `a + b = c (mod p)`, a
fixed random share of all pairs for training, a 1-layer ReLU transformer without
LayerNorm, full-batch AdamW with strong weight decay. Nothing in the conditions
mentions sines, cosines or frequencies.

The mechanism Nanda et al. found: the model embeds a and b as cos/sin(w·a) at a few
*key frequencies* w = 2πk/p, and combines them with trig identities into
cos(w(a + b − c)). Its progress measures, all computed here from the run itself:

- Fourier sparsity of the embedding: the share of the embedding's norm carried by each
  frequency k (a DFT over the token axis). Key frequencies are the few that carry much
  more than an even share; they are found in the final model, never written down.
- Restricted loss: the loss when the logits, as a function of (a, b), keep only their
  key-frequency components of the form cos/sin(w(a + b)) (and their mean). It falls
  when the Fourier circuit works, which can be long before the test loss does, since
  the memorising components still hurt the test pairs.
- Excluded loss: the train loss with exactly those components removed. It rises while
  the model comes to rely on the circuit instead of memorising.
- Total weight norm: weight decay removes the memorising weights during clean-up.

Read top to bottom: the claim, the predictions (thresholds fixed here, before any
run), the conditions per scale, the observer, what is measured, and the verdict.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedbed.conditions import Conditions, parse
from seedbed.model import evaluating
from seedbed.read import load
from seedbed.read.load import checkpoint_steps
from seedbed.run import Run
from seedbed.trials.base import Check, Evidence, Prediction, Trial, register
from seedbed.watch.observers import weight_norm

MEMORISED = 0.99  # (a) train accuracy that counts as memorised
EARLY = 0.25  # (a) … reached within this share of training
CHANCE_BAR = 0.10  # (b) test accuracy under this is "not generalising"
PLATEAU_TIMES = 3.0  # (b) … for at least this many times the memorisation time after memorising
GROKKED = 0.95  # (c) test accuracy that counts as generalised
KEY_SHARE_TIMES = 3.0  # a key frequency carries more than this many times an even share of the embedding's norm
MAX_KEY = 10  # (d) at most this many key frequencies …
KEY_NORM = 0.5  # (d) … carrying at least this share of the embedding's (non-constant) norm
EXCLUDED_RISE = 2.0  # (f) excluded loss rises to at least this many times its value at memorisation
NORM_FALL = 0.10  # (g) the weight norm falls by at least this share during clean-up


@register
class Grokking(Trial):
    name = "grokking"
    claim = (
        "A small transformer trained on modular addition memorises its training pairs early, stays at chance on held-out "
        "pairs for a long time, then generalises — by a Fourier-based algorithm that nobody wrote, visible in progress "
        "measures before the test loss moves."
    )
    source = ("Power et al. 2022, Grokking (arXiv 2201.02177); Nanda et al. 2023, Progress measures for grokking via "
              "mechanistic interpretability (arXiv 2301.05217)")
    predictions = [
        Prediction("a", "train accuracy reaches ~100% early", f"train accuracy ≥ {MEMORISED:.0%} within the first {EARLY:.0%} of training"),
        Prediction("b", "test accuracy then stays near chance for a long stretch",
                   f"test accuracy < {CHANCE_BAR:.0%} from memorisation for at least {PLATEAU_TIMES:g}× the memorisation time"),
        Prediction("c", "then test accuracy rises: the model generalises", f"test accuracy > {GROKKED:.0%} before the end"),
        Prediction("d", "the final embedding is sparse in the Fourier basis",
                   f"at most {MAX_KEY} key frequencies (each > {KEY_SHARE_TIMES:g}× an even share of the embedding's norm), "
                   f"together ≥ {KEY_NORM:.0%} of it"),
        Prediction("e", "the restricted loss (key-frequency logits only) falls before the test loss does",
                   "restricted loss crosses halfway (in log) from its post-memorisation peak to its final value before the test loss does"),
        Prediction("f", "the excluded loss (train loss without the key-frequency logits) rises after memorisation",
                   f"its peak after memorisation ≥ {EXCLUDED_RISE:g}× its value at memorisation"),
        Prediction("g", "the total weight norm falls during clean-up",
                   f"from the start of the test-loss fall to the end of training it falls by ≥ {NORM_FALL:.0%}"),
    ]
    observe_every = {"tiny": 10, "small": 25, "full": 100}
    watch_series = {"watch/train_accuracy": ("train accuracy", 0.2), "watch/test_accuracy": ("test accuracy", 0.2)}

    # ── conditions ──────────────────────────────────────────────────────────
    def conditions(self, scale: str, seed: int) -> dict[str, Conditions]:
        return {"main": parse(grokking_conditions(scale, seed))}

    def observers(self, model: nn.Module, soil) -> list:
        return [ModularProgress(soil), weight_norm]

    # ── measurements ────────────────────────────────────────────────────────
    def measure(self, path: Path) -> Evidence:
        return measure_run(path / "main")

    # ── the verdict, from the predictions and the evidence only ─────────────
    def judge(self, ev: Evidence) -> list[Check]:
        n = ev.numbers
        steps = n["steps"]
        checks = []
        mem = n["memorised_step"]
        if mem is None:
            checks.append(Check("a", f"train accuracy never reached {MEMORISED:.0%} (final {n['train_accuracy_final']:.1%})", False))
        else:
            checks.append(Check("a", f"train accuracy ≥ {MEMORISED:.0%} at step {mem:,} ({mem / steps:.0%} of training)", mem <= EARLY * steps))

        left = n["left_chance_step"]
        if mem is None:
            checks.append(Check("b", "never memorised: no plateau to measure", False))
        else:
            stretch = (left if left is not None else steps) - mem
            shown = f"step {left:,}" if left is not None else "never"
            checks.append(Check("b", f"test accuracy < {CHANCE_BAR:.0%} until {shown}: {stretch:,} steps after memorisation = "
                                     f"{stretch / max(mem, 1):.1f}× the memorisation time", stretch >= PLATEAU_TIMES * mem))

        g = n["grokked_step"]
        checks.append(Check("c", f"test accuracy > {GROKKED:.0%} at step {g:,}" if g is not None
                                 else f"test accuracy never passed {GROKKED:.0%} (final {n['test_accuracy_final']:.1%})", g is not None))

        k, share = n["key_frequencies"], n["key_norm_share"]
        checks.append(Check("d", f"{len(k)} key frequencies ({', '.join(map(str, k)) or 'none'}) carry {share:.0%} of the embedding's norm "
                                 f"(at initialisation: {n['key_norm_share_init']:.0%})", 0 < len(k) <= MAX_KEY and share >= KEY_NORM))

        r, t = n["restricted_fall_step"], n["test_fall_step"]
        if r is None or t is None:
            which = " and ".join(w for w, s in (("restricted", r), ("test", t)) if s is None)
            checks.append(Check("e", f"the {which} loss never fell halfway after memorisation", False if g is not None else None))
        else:
            checks.append(Check("e", f"restricted loss crossed halfway at step {r:,}, test loss at step {t:,}", r < t))

        at_mem, peak = n["excluded_loss_at_memorised"], n["excluded_loss_peak"]
        if at_mem is None or peak is None:
            checks.append(Check("f", "no excluded loss after memorisation to compare", None if mem is None else False))
        else:
            checks.append(Check("f", f"excluded loss {at_mem:.3g} at memorisation, peak {peak:.3g} at step {n['excluded_peak_step']:,} "
                                     f"({peak / max(at_mem, 1e-12):.1f}×)", peak >= EXCLUDED_RISE * at_mem))

        before, after = n["weight_norm_at_test_fall_start"], n["weight_norm_final"]
        if before is None:
            checks.append(Check("g", "the test loss never started to fall: no clean-up to measure", False if g is None else None))
        else:
            fall = 1 - after / before
            checks.append(Check("g", f"weight norm {before:.1f} at step {n['test_fall_start_step']:,} → {after:.1f} at the end ({fall:.0%} lower)",
                                fall >= NORM_FALL))
        return checks


def grokking_conditions(scale: str, seed: int) -> dict:
    """The conditions per scale: `full` is Nanda et al.'s; `small` and `tiny` are chosen by measurement (docs/trials.md)."""
    soil = {"kind": "modular-arithmetic", "p": 113, "operation": "add", "train_fraction": 0.3}
    opt = {"lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 1.0, "grad_clip": 0.0}
    steps, every = 30_000, 100
    if scale == "small":  # ≤ 10 min on 2 cores with a plateau: chosen by pilot runs (docs/trials.md)
        soil.update(train_fraction=0.35)
        opt.update(lr=2e-3, weight_decay=1.5)
        steps, every = 2_000, 50
    elif scale == "tiny":  # seconds, for the tests: a small prime
        soil.update(p=23, train_fraction=0.5)
        opt.update(lr=3e-3, weight_decay=1.0)
        steps, every = 300, 10
    return {
        "name": "grokking", "seed": seed, "soil": soil,
        "architecture": {"n_layers": 1, "d_model": 128, "n_heads": 4, "d_mlp": 512, "act": "relu", "layernorm": False, "n_ctx": 3,
                         "init": "fan-in"},  # Nanda et al.'s init; with GPT-2's smaller one the model generalises as it fits, no plateau
        "objective": {"loss_on": "answer", "loss_dtype": "float64"},
        "optimizer": opt,
        "schedule": {"steps": steps, "warmup_steps": 10, "decay": "constant", "eval_every": every},
        # checkpoints feed the restricted and excluded losses, which need the final key frequencies
        "checkpoints": {"log_until": 0, "every": max(1, steps // 40)},
    }


# ── the observer: accuracy and loss on every pair, and the embedding's Fourier spectrum ──
class ModularProgress:
    """Train and test loss and accuracy over *all* pairs, and each frequency's share of the embedding.

    One forward pass over the p² inputs. Names: `watch/train_loss`, `watch/train_accuracy`,
    `watch/test_loss`, `watch/test_accuracy`, `watch/fourier/kNNN` (share of the embedding's
    non-constant norm at frequency NNN).
    """

    def __init__(self, soil) -> None:
        self.p = soil.s.p
        self.inputs, self.answers, self.is_train = all_pairs(soil)

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        logits = answer_logits(model, self.inputs, self.p)
        out: dict[str, float] = {}
        for split, rows in (("train", self.is_train), ("test", ~self.is_train)):
            out[f"watch/{split}_loss"] = float(F.cross_entropy(logits[rows], self.answers[rows]))
            out[f"watch/{split}_accuracy"] = float((logits[rows].argmax(-1) == self.answers[rows]).double().mean())
        for k, share in enumerate(fourier_shares(model, self.p).tolist(), start=1):
            out[f"watch/fourier/k{k:03d}"] = share
        return out


def all_pairs(soil) -> tuple[Tensor, Tensor, Tensor]:
    """Every (a, b) in a-major order as model inputs `a b =`, the answers, and which pairs are in the train split."""
    p = soil.s.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    inputs = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    answers = soil.apply(a, b)
    is_train = torch.zeros(p * p, dtype=torch.bool)
    is_train[soil.train[:, 0] * p + soil.train[:, 1]] = True
    return inputs, answers, is_train


def answer_logits(model: nn.Module, inputs: Tensor, p: int) -> Tensor:
    """Float64 logits over the p answers (the "=" token is never an answer) at the last position."""
    device = next(model.parameters()).device
    with evaluating(model), torch.no_grad():
        return model(inputs.to(device))[:, -1, :p].double().cpu()


def fourier_shares(model: nn.Module, p: int) -> Tensor:
    """Share of the embedding's norm² at each frequency k = 1 … (p−1)/2 (the constant term left out).

    A DFT over the token axis of W_E[0:p]; frequency k and p − k are the same real
    frequency (cos and sin of 2πk·a/p), so they are added together.
    """
    w = model.embed.weight.detach()[:p].double().cpu()
    power = torch.fft.fft(w, dim=0).abs().square().sum(dim=1)  # [p]
    half = torch.stack([power[k] + power[p - k] for k in range(1, (p - 1) // 2 + 1)])
    return half / half.sum()


def key_frequencies(shares: Tensor) -> list[int]:
    """The frequencies carrying more than KEY_SHARE_TIMES an even share, strongest first."""
    even = 1 / len(shares)
    order = torch.argsort(shares, descending=True).tolist()
    return [k + 1 for k in order if shares[k] > KEY_SHARE_TIMES * even]


def restricted_and_excluded(logits: Tensor, p: int, keys: list[int]) -> tuple[Tensor, Tensor]:
    """The logits as functions of (a, b), with only / without their key-frequency cos/sin(w(a + b)) parts.

    A function of a + b alone lives on the diagonal of the 2D DFT: cos/sin(2πk(a + b)/p)
    is frequency (k, k) and (p − k, p − k). Restricted keeps those for the key k and the
    mean (0, 0); excluded removes them (Nanda et al.'s definitions, in a DFT basis).
    """
    grid = logits.view(p, p, -1)
    spectrum = torch.fft.fft2(grid, dim=(0, 1))
    mask = torch.zeros(p, p, 1, dtype=torch.float64)
    for k in keys:
        mask[k, k] = mask[p - k, p - k] = 1.0
    key_part = torch.fft.ifft2(spectrum * mask, dim=(0, 1)).real
    mean = grid.mean(dim=(0, 1), keepdim=True)
    return (key_part + mean).reshape(p * p, -1), (grid - key_part).reshape(p * p, -1)


# ── measuring a finished run ─────────────────────────────────────────────────
def measure_run(path: Path) -> Evidence:
    """Memorisation, plateau, grokking, key frequencies and the progress measures of one run."""
    m = Evidence()
    n = m.numbers
    run = Run.open(path, readonly=True)
    steps = run.conditions.schedule.steps
    n["seed"] = run.conditions.seed
    series = {name: run.metric(name) for name in ("watch/train_accuracy", "watch/test_accuracy", "watch/train_loss", "watch/test_loss", "watch/weight_norm")}
    fourier_names = sorted(name for name in run.metric_names() if name.startswith("watch/fourier/"))
    fourier = {name: run.metric(name) for name in fourier_names}
    run.close()
    at = {name: dict(pts) for name, pts in series.items()}
    n["steps"] = steps

    # (a)–(c) memorisation, the plateau, grokking
    mem = first(series["watch/train_accuracy"], lambda v: v >= MEMORISED)
    n["memorised_step"] = mem
    n["left_chance_step"] = first(series["watch/test_accuracy"], lambda v: v >= CHANCE_BAR, after=mem or 0) if mem is not None else None
    n["grokked_step"] = first(series["watch/test_accuracy"], lambda v: v > GROKKED)
    n["train_accuracy_final"] = round(series["watch/train_accuracy"][-1][1], 4)
    n["test_accuracy_final"] = round(series["watch/test_accuracy"][-1][1], 4)
    n["train_loss_final"] = float(f"{series['watch/train_loss'][-1][1]:.4g}")
    n["test_loss_final"] = float(f"{series['watch/test_loss'][-1][1]:.4g}")

    # (d) the key frequencies of the final embedding, and the same share at initialisation
    grown = load(path)
    p = grown.soil.s.p
    final_shares = fourier_shares(grown.model, p)
    keys = key_frequencies(final_shares)
    n["key_frequencies"] = keys
    n["key_norm_share"] = round(float(final_shares[[k - 1 for k in keys]].sum()), 4) if keys else 0.0
    init_shares = torch.tensor([pts[0][1] for pts in fourier.values()], dtype=torch.float64)
    n["key_norm_share_init"] = round(float(init_shares[[k - 1 for k in keys]].sum()), 4) if keys else 0.0
    n["fourier_top_share"] = round(float(final_shares.max()), 4)

    # (e), (f) restricted and excluded loss at every checkpoint, with the final key frequencies
    inputs, answers, is_train = all_pairs(grown.soil)
    progress = {"restricted": [], "excluded": [], "test": [], "train": []}
    for step in checkpoint_steps(path):
        model = grown.model if step == grown.step else load(path, step=step).model
        logits = answer_logits(model, inputs, p)
        restricted, excluded = restricted_and_excluded(logits, p, keys)
        progress["restricted"].append((step, float(F.cross_entropy(restricted, answers))))
        progress["excluded"].append((step, float(F.cross_entropy(excluded[is_train], answers[is_train]))))
    progress["test"], progress["train"] = series["watch/test_loss"], series["watch/train_loss"]
    after = mem or 0
    n["restricted_fall_step"] = half_fall_step(progress["restricted"], after)
    n["test_fall_step"] = half_fall_step(series["watch/test_loss"], after)
    excl = [(s, v) for s, v in progress["excluded"] if s >= after] if mem is not None else []
    n["excluded_loss_at_memorised"] = float(f"{excl[0][1]:.4g}") if excl else None
    peak = max(excl, key=lambda sv: sv[1]) if excl else None
    n["excluded_loss_peak"] = float(f"{peak[1]:.4g}") if peak else None
    n["excluded_peak_step"] = peak[0] if peak else None

    # (g) the weight norm from the start of the test-loss fall to the end
    start = fall_start_step(series["watch/test_loss"], after) if mem is not None else None
    n["test_fall_start_step"] = start
    n["weight_norm_at_test_fall_start"] = round(at["watch/weight_norm"][start], 3) if start is not None else None
    n["weight_norm_final"] = round(series["watch/weight_norm"][-1][1], 3)

    # figures
    spans = []
    if mem is not None:
        spans.append({"from": mem, "to": n["left_chance_step"] or steps, "label": "plateau"})
    line = lambda label, pts: {"label": label, "x": [s for s, _ in pts], "y": [max(v, 1e-12) for _, v in pts]}
    m.figures.append({
        "kind": "lines", "id": "loss", "main": True, "log_y": True, "title": "Train and test loss (log scale): memorisation, plateau, grokking",
        "x_label": "step", "y_label": "nats", "series": [line("train loss", progress["train"]), line("test loss", progress["test"])], "spans": spans,
    })
    m.figures.append({
        "kind": "lines", "id": "accuracy", "title": "Accuracy on the train and the held-out pairs", "x_label": "step", "y_label": "accuracy",
        "series": [line("train", series["watch/train_accuracy"]), line("test", series["watch/test_accuracy"])], "spans": spans,
        "hlines": [{"y": GROKKED, "label": f"{GROKKED:.0%}"}],
    })
    m.figures.append({
        "kind": "lines", "id": "progress", "log_y": True, "x_label": "step", "y_label": "nats",
        "title": f"Progress measures, key frequencies {', '.join(map(str, keys)) or 'none'} (restricted: all pairs; excluded: train pairs)",
        "series": [line("restricted loss", progress["restricted"]), line("excluded loss", progress["excluded"]), line("test loss", progress["test"]),
                   line("train loss", progress["train"])],
        "spans": spans,
    })
    m.figures.append({
        "kind": "lines", "id": "weight-norm", "title": "Total weight norm: weight decay removes the memorising weights during clean-up",
        "x_label": "step", "y_label": "L2 norm", "series": [line("weight norm", series["watch/weight_norm"])], "spans": spans,
    })
    m.figures.append({
        "kind": "bars", "id": "fourier", "x_label": "frequency k", "y_label": "share of the embedding's norm",
        "title": f"Fourier spectrum of the final embedding; key frequencies: {', '.join(map(str, keys)) or 'none'}",
        "bars": [{"label": str(k), "value": float(v), "highlight": k in keys} for k, v in enumerate(final_shares.tolist(), start=1)],
        "hlines": [{"y": KEY_SHARE_TIMES / len(final_shares), "label": f"{KEY_SHARE_TIMES:g}× even share"}],
    })
    if fourier:
        m.figures.append({
            "kind": "heatmap", "id": "fourier-over-time", "title": "The embedding's Fourier spectrum over training (rows: frequency)",
            "x_labels": [str(s) for s, _ in next(iter(fourier.values()))], "y_labels": [name.rsplit("/k", 1)[1].lstrip("0") for name in fourier_names],
            "values": [[v for _, v in pts] for pts in fourier.values()], "x_label": "step", "y_label": "frequency",
        })
    return m


def first(points: list[tuple[int, float]], test, after: int = 0) -> int | None:
    """The first step at or after `after` whose value passes `test`."""
    return next((s for s, v in points if s >= after and test(v)), None)


def half_fall_step(points: list[tuple[int, float]], after: int) -> int | None:
    """First step after the post-`after` peak where the loss is halfway (in log) from that peak to its final value."""
    tail = [(s, v) for s, v in points if s >= after]
    if len(tail) < 3:
        return None
    peak_i = max(range(len(tail)), key=lambda i: tail[i][1])
    top, end = math.log(max(tail[peak_i][1], 1e-30)), math.log(max(tail[-1][1], 1e-30))
    if top - end < math.log(2):  # it did not fall (by at least a factor 2): no fall to time
        return None
    middle = (top + end) / 2
    return next((s for s, v in tail[peak_i:] if math.log(max(v, 1e-30)) <= middle), None)


def fall_start_step(points: list[tuple[int, float]], after: int) -> int | None:
    """Where the fall to the final loss begins: the last step, before the halfway point, at the post-memorisation peak's 90% (in log)."""
    half = half_fall_step(points, after)
    if half is None:
        return None
    tail = [(s, v) for s, v in points if after <= s <= half]
    peak = max(v for _, v in tail)
    top, end = math.log(max(peak, 1e-30)), math.log(max(points[-1][1], 1e-30))
    bar = top - 0.1 * (top - end)
    above = [s for s, v in tail if math.log(max(v, 1e-30)) >= bar]
    return above[-1] if above else tail[0][0]
