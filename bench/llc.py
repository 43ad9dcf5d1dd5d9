"""What the LLC observer costs while a model grows, as a share of growth's training time.

    python bench/llc.py                          # the induction trial's model at small, 600 steps, LLC every 200
    python bench/llc.py --scale tiny --every 100 # seconds, not minutes
    python bench/llc.py --steps 3000 --every 500 # the trial's whole schedule

It grows the induction trial's main conditions twice in a temporary folder, with the trial's own
observers (held-out losses, head scores, weight norm: observed every 25 steps, as the trial does):
once as they are, once with the LLC observer added at its default settings (`seedbed.watch.llc.Sampling`).
It prints growth's own clock (`time/train_s`, `time/observe_s` from run.sqlite), the LLC observer's
seconds (timed around its calls), its share of training time, the cost of one LLC observation in
training steps, and checks that both runs grew the same weights bit for bit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import load, say  # bench/ is on sys.path when a script here runs

from seedbed.grow import grow
from seedbed.model import Transformer
from seedbed.read.load import load as load_grown
from seedbed.run import Run
from seedbed.soil import resolve
from seedbed.trials.induction import Induction
from seedbed.watch import default_observers
from seedbed.watch.llc import SERIES, LLCObserver, Sampling

OBSERVE_EVERY = 25  # as the induction trial observes


class Timed:
    """An observer's calls, timed (and counted when it answered)."""

    def __init__(self, observer) -> None:
        self.observer, self.seconds, self.answered = observer, 0.0, 0

    def __call__(self, model, step):
        t0 = time.perf_counter()
        out = self.observer(model, step)
        self.seconds += time.perf_counter() - t0
        self.answered += bool(out)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="small", choices=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=600, help="growth steps (the trial's own: tiny 800, small 3000)")
    ap.add_argument("--every", type=int, default=200, help="LLC observation every N steps (and step 0)")
    args = ap.parse_args()

    cond = Induction().conditions(args.scale, 0)["main"]
    sched = cond.schedule.model_copy(update={"steps": args.steps, "eval_every": min(cond.schedule.eval_every, args.steps)})
    cond = cond.model_copy(update={"schedule": sched})
    resolved, soil = resolve(cond)
    sampling = Sampling()
    say(f"load {load()} · torch threads {torch.get_num_threads()} · induction {args.scale}, {args.steps} steps, "
        f"{Transformer(resolved.architecture).n_params():,} parameters")
    say(f"LLC every {args.every} steps: {sampling.describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        timed = Timed(LLCObserver(soil, resolved, sampling, every=args.every))
        t0 = time.perf_counter()
        watched = grow(cond, runs_dir=runs, name="llc", observers=[*default_observers(Transformer(resolved.architecture), soil), timed],
                       observe_every=OBSERVE_EVERY, progress=False)
        wall_llc = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain = grow(cond, runs_dir=runs, name="plain", observers=default_observers(Transformer(resolved.architecture), soil),
                     observe_every=OBSERVE_EVERY, progress=False)
        wall_plain = time.perf_counter() - t0
        r = Run.open(watched.path, readonly=True)
        train_s, observe_s = r.last_metric("time/train_s"), r.last_metric("time/observe_s")
        series = r.metric(SERIES[0])
        r.close()
        p = Run.open(plain.path, readonly=True)
        plain_train_s, plain_observe_s = p.last_metric("time/train_s"), p.last_metric("time/observe_s")
        p.close()
        a, b = load_grown(watched.path).model.state_dict(), load_grown(plain.path).model.state_dict()
        same = all(torch.equal(a[k], b[k]) for k in a)
    per_step = train_s / args.steps
    per_obs = timed.seconds / max(timed.answered, 1)
    say(f"load {load()}")
    say(f"with LLC:    wall {wall_llc:7.1f}s · training {train_s:6.1f}s · all observers {observe_s:6.1f}s · "
        f"LLC {timed.seconds:6.1f}s over {timed.answered} observations")
    say(f"without LLC: wall {wall_plain:7.1f}s · training {plain_train_s:6.1f}s · all observers {plain_observe_s:6.1f}s")
    say(f"LLC share of training time: {timed.seconds / train_s:.1%} · one LLC observation {per_obs:.1f}s "
        f"= {per_obs / per_step:,.0f} training steps ({sampling.chains * (sampling.burnin + sampling.draws)} SGLD steps)")
    say("series: " + ", ".join(f"{s}: {v:.2f}" for s, v in series))
    say(f"same weights with and without the LLC observer: {same}")


if __name__ == "__main__":
    main()
