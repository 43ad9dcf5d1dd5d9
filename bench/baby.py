"""nanoGPT's CPU "baby GPT" on Shakespeare: seedbed's grow() against a nanoGPT-style loop, to the same val loss.

nanoGPT's README ("I only have a macbook") trains 4 layers, 4 heads, d_model 128, block 64,
batch 12, 2,000 iterations, dropout 0, and reports val loss about 1.88 after about 3 minutes on
a laptop CPU. This script runs that configuration twice, interleaved as whole runs:

- **reference**: the plain nanoGPT-style GPT of bench/grow.py in a bare loop, trained as
  nanoGPT's `train_shakespeare_char` trains it (AdamW, betas (0.9, 0.99), weight decay 0.1 on
  matrices, lr 1e-3 with 100 warmup steps and cosine decay to 1e-4 at step 2,000, grad clip 1.0);
- **seedbed**: `seedbed.grow.grow()` on examples/shakespeare-baby.toml (the same shape and schedule),
  with its checkpoints, run.sqlite, observers' bookkeeping and all.

Both read the same batches (the text soil's, bytes as tokens) and evaluate on the same held-out
batches at the same steps, so their losses are comparable step for step. The figure: the wall
time each takes to first reach a val loss both reach (the higher of the two final val losses),
and its ratio seedbed / reference. Evaluation time counts in both (same batches, same steps).

    python bench/baby.py                 # 2,000 steps each: ~10 min on 2 quiet cores
    python bench/baby.py --steps 300     # a shorter check of the same comparison
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F
from common import load, say  # bench/ is on sys.path when a script here runs
from grow import GPT, Config, _quiet_console, nanogpt_adamw

import seedbed.grow as seedbed_grow
from seedbed.conditions import Conditions, parse
from seedbed.grow import grow, learning_rate
from seedbed.run import Run
from seedbed.soil import resolve

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shakespeare-baby.toml"


def conditions(steps: int, eval_every: int) -> Conditions:
    """The example's conditions with the step count and evaluation schedule of this bench."""
    raw = tomllib.loads(EXAMPLE.read_text())
    raw["schedule"].update(steps=steps, eval_every=eval_every)
    return parse(raw)


@torch.no_grad()
def val_loss(model: torch.nn.Module, soil, cond: Conditions) -> float:
    """Mean cross-entropy over the soil's held-out batches: the batches grow() evaluates on."""
    model.eval()
    total = count = 0.0
    for i in range(cond.schedule.eval_batches):
        batch = soil.eval_batch(i, cond.schedule.batch_size)
        logits = model(batch.inputs)
        total += F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="sum").item()
        count += batch.targets.numel()
    model.train()
    return total / count


def run_reference(cond: Conditions) -> dict[int, tuple[float, float]]:
    """nanoGPT's loop on the soil's batches: {step: (seconds since start, val loss)} at every evaluation.

    The clock starts before the soil is opened, as grow()'s does: both are timed from nothing.
    """
    start = time.perf_counter()
    _, soil = resolve(cond)
    a = cond.architecture
    cfg = Config("baby", a.n_layers, a.d_model, a.n_heads, a.n_ctx, cond.schedule.batch_size, soil.d_vocab, 4 * a.d_model)
    torch.manual_seed(cond.seed)
    model = GPT(cfg)
    opt = nanogpt_adamw(model)
    for group in opt.param_groups:
        group["betas"] = tuple(cond.optimizer.betas)
        group["weight_decay"] = cond.optimizer.weight_decay if group["weight_decay"] else 0.0
    sched, every = cond.schedule, cond.schedule.eval_every
    seen = {0: (0.0, val_loss(model, soil, cond))}
    for step in range(sched.steps):
        lr = learning_rate(step, cond.optimizer, sched)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = soil.train_batch(step, sched.batch_size)
        loss = F.cross_entropy(model(batch.inputs).flatten(0, 1), batch.targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % every == 0 or step + 1 == sched.steps:
            seen[step + 1] = (time.perf_counter() - start, val_loss(model, soil, cond))
    return seen


def run_seedbed(cond: Conditions) -> dict[int, tuple[float, float]]:
    """grow() itself: {step: (seconds since start, eval/loss)}, timed as each of its evaluations returns.

    The timing wraps grow's `evaluate` (a bench-only instrument: it returns what it was given), so the
    clock stops where the reference's does, at the end of an evaluation.
    """
    returned: list[float] = []
    real = seedbed_grow.evaluate

    def timed(*args, **kwargs):
        out = real(*args, **kwargs)
        returned.append(time.perf_counter())
        return out

    seedbed_grow.evaluate = timed
    try:
        with tempfile.TemporaryDirectory(prefix="seedbed-bench-baby-") as runs_dir:
            start = time.perf_counter()
            grow(cond, runs_dir=runs_dir, name="baby", progress=False, console=_quiet_console())
            run = Run.open(Path(runs_dir) / "baby", readonly=True)
            try:
                evals = sorted(run.metric("eval/loss"))
            finally:
                run.close()
    finally:
        seedbed_grow.evaluate = real
    assert len(evals) == len(returned), (len(evals), len(returned))
    return {step: (t - start, loss) for (step, loss), t in zip(evals, returned)}


def time_to(curve: dict[int, tuple[float, float]], target: float) -> tuple[int, float] | None:
    """The first evaluation at or below `target`: (step, seconds)."""
    for step in sorted(curve):
        seconds, loss = curve[step]
        if loss <= target:
            return step, seconds
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats of the pair; the best time counts")
    ns = ap.parse_args()
    cond = conditions(ns.steps, ns.eval_every)
    say(f"baby GPT: {cond.architecture.n_layers} layers, d_model {cond.architecture.d_model}, block {cond.architecture.n_ctx}, "
        f"batch {cond.schedule.batch_size}, {ns.steps} steps; torch {torch.__version__}, {torch.get_num_threads()} threads")
    curves: dict[str, list[dict[int, tuple[float, float]]]] = {"reference": [], "seedbed": []}
    for r in range(ns.repeats):
        for name, fn in (("reference", run_reference), ("seedbed", run_seedbed)):
            say(f"  repeat {r + 1}: {name} ... (load {load()})")
            curve = fn(cond)
            curves[name].append(curve)
            last = max(curve)
            say(f"    val loss {curve[last][1]:.3f} at step {last}, {curve[last][0]:.1f} s (load {load()})")
    target = max(min(c[max(c)][1] for c in cs) for cs in curves.values())
    say(f"target val loss (reached by both): {target:.3f}   nanoGPT reports ~1.88")
    best = {}
    for name, cs in curves.items():
        hits = [h for h in (time_to(c, target) for c in cs) if h is not None]
        best[name] = min(hits, key=lambda h: h[1])
        say(f"  {name:9s}: step {best[name][0]:5d}, {best[name][1]:7.1f} s")
    for name, cs in curves.items():
        hit = time_to(cs[0], 1.88)
        say(f"  {name:9s} reaches 1.88: " + (f"step {hit[0]}, {hit[1]:.1f} s" if hit else "no"))
    ratio = best["seedbed"][1] / best["reference"][1]
    say(f"wall time to val loss {target:.3f}, seedbed / reference: {ratio:.2f}x" + ("" if math.isfinite(ratio) else " (?)"))


if __name__ == "__main__":
    main()
