"""Cost of reading a model: caching every activation, patching sweeps, attribution patching.

    python bench/read.py                 # (i), (ii) and (iii) on configs (a) and (b)
    python bench/read.py --only sweep    # one part (repeatable): cache, sweep, attr
    python bench/read.py --configs a     # one config
    python bench/read.py --quick         # smoke test: few repeats, (ii) on (a) only
    python bench/read.py --json out.json # also write the figures as JSON

Configs, fp32, GELU, LayerNorm, random weights (speed does not depend on training):
  (a) 2 layers, d_model 128, 4 heads, d_mlp 512, vocab 1000
  (b) 6 layers, d_model 384, 6 heads, d_mlp 1536, vocab 1000

(i)   cache everything: `run_with_cache(model, tokens)` with every hook point (attention
      scores and patterns included, so attention takes its explicit path) vs a plain
      forward; batch 8 x 128 tokens and the sweep's shape. Target <= 1.2x.
(ii)  activation patching of every head at every position ("z", per position) on the
      sweep's shape (batch 8 x 32 tokens by default: (a) has 8 heads x 32 = 256 patches,
      (b) 36 x 32 = 1152): batched (the default path) vs one patch per forward
      (`batched=False`). Metrics: a logit difference at the last position, given all
      logits (the batched path finds that it reads one position), and again declared
      with `metric_positions=[-1]`; and a metric that reads every position (mean
      log-probability of a token), where nothing can be skipped. Each is compared with
      its own one-per-forward results. Target >= 10x.
(iii) attribution patching of all heads x positions (`sites=["z"]`; also every site) in
      forward-pass equivalents: its time / a plain forward's on the same input. Target < 3.

Every measurement is repeated, interleaved with the ones it is compared with (a, b, a,
b, ...), and reported as the best and the median of the repeats; ratios are of figures
from this same run. The machine is shared and noisy: compare ratios, not absolute times.
Threads: torch's own count by default. When other jobs keep the cores busy, OpenMP
threads wait for each other and a small forward can take 10-100x longer (seen on 2
cores at load 9); `--threads 1` then gives steadier figures, and the bench says so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from common import load, say  # bench/ is on sys.path when a script here runs
from seedbed.conditions import Architecture
from seedbed.hooks import run_with_cache
from seedbed.model import Transformer
from seedbed.read.patching import activation_patching, attribution_patching


# ── the configs ──────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Config:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    vocab: int = 1000
    n_ctx: int = 128

    def model(self) -> Transformer:
        arch = Architecture(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, d_mlp=self.d_mlp,
            n_ctx=self.n_ctx, d_vocab=self.vocab, act="gelu", layernorm=True,
        )
        return Transformer(arch, seed=0).eval()

    def describe(self) -> str:
        return (f"({self.name}) {self.n_layers} layers, d_model {self.d_model}, {self.n_heads} heads, "
                f"d_mlp {self.d_mlp}, vocab {self.vocab}")


CONFIGS = {
    "a": Config("a", n_layers=2, d_model=128, n_heads=4, d_mlp=512),
    "b": Config("b", n_layers=6, d_model=384, n_heads=6, d_mlp=1536),
}


def token_pair(cfg: Config, batch: int, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean tokens, and corrupted ones that differ in a quarter of the positions."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(cfg.vocab, (batch, pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, pos // 4 : pos // 2] = torch.randint(cfg.vocab, (batch, pos // 2 - pos // 4), generator=g)
    return clean, corrupted


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """The usual patching metric: logit of one token minus another's, at the last position."""
    return (logits[:, -1, 1] - logits[:, -1, 2]).mean()


def every_position(logits: torch.Tensor) -> torch.Tensor:
    """A metric that reads every position (mean log-probability of one token): nothing can be skipped."""
    return logits.log_softmax(-1)[..., 1].mean()


# ── timing ───────────────────────────────────────────────────────────────────
def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each fn, `repeats` times, in turn (a, b, a, b, ...), after one untimed call each."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            gc.collect()
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return times


def best(ts: list[float]) -> float:
    return min(ts)


def median(ts: list[float]) -> float:
    return statistics.median(ts)


def ms(t: float) -> str:
    return f"{t * 1e3:,.2f} ms"


# ── (i) cache everything ─────────────────────────────────────────────────────
def measure_cache(cfg: Config, shapes: list[tuple[int, int]], repeats: int) -> list[dict]:
    model = cfg.model()
    out = []
    for batch, pos in shapes:
        tokens = token_pair(cfg, batch, pos)[0]

        def forward(tokens: torch.Tensor = tokens) -> None:
            with torch.no_grad():
                model(tokens)

        def cache(tokens: torch.Tensor = tokens) -> None:
            run_with_cache(model, tokens)

        n_points = len(run_with_cache(model, tokens)[1])
        t = interleaved({"forward": forward, "cache": cache}, repeats)
        r = {
            "batch": batch, "pos": pos, "hook_points": n_points,
            "forward_s": best(t["forward"]), "cache_s": best(t["cache"]),
            "ratio_best": best(t["cache"]) / best(t["forward"]),
            "ratio_median": median(t["cache"]) / median(t["forward"]),
            "times": t,
        }
        say(f"   ({cfg.name}) batch {batch} x {pos}: forward {ms(r['forward_s'])}, cache all {n_points} hook points "
            f"{ms(r['cache_s'])}: {r['ratio_best']:.2f}x (best), {r['ratio_median']:.2f}x (median)   (load {load()})")
        out.append(r)
    return out


# ── (ii) the patching sweep ──────────────────────────────────────────────────
def measure_sweep(cfg: Config, batch: int, pos: int, repeats: int) -> dict:
    """Batched, with the metric given all logits and told it reads the last position only, vs one per forward."""
    model = cfg.model()
    clean, corrupted = token_pair(cfg, batch, pos)
    n_patches = cfg.n_layers * cfg.n_heads * pos
    results: dict[str, torch.Tensor] = {}

    def run(name: str, metric=logit_diff, **kw) -> Callable[[], None]:
        def f() -> None:
            results[name] = activation_patching(model, clean, corrupted, metric, "z", **kw)
        return f

    t = interleaved({
        "batched": run("batched"),
        "batched_last": run("batched_last", metric_positions=[-1]),
        "batched_every": run("batched_every", every_position),
        "one_per_forward": run("one_per_forward", batched=False),
        "one_per_forward_every": run("one_per_forward_every", every_position, batched=False),
    }, repeats)
    slow = results["one_per_forward"]
    r = {"batch": batch, "pos": pos, "patches": n_patches, "times": t, "one_per_forward_s": best(t["one_per_forward"]),
         "metric_range": (slow.max() - slow.min()).item()}
    say(f"   ({cfg.name}) {n_patches} patches (batch {batch} x {pos}): one per forward {ms(r['one_per_forward_s'])} "
        f"({ms(r['one_per_forward_s'] / n_patches)} each); metric spans {r['metric_range']:.3f}   (load {load()})")
    for k, label in (("batched", "batched, last-position metric"), ("batched_last", "  … declared: metric_positions=[-1]"),
                     ("batched_every", "batched, metric reads every position")):
        ref = "one_per_forward_every" if k == "batched_every" else "one_per_forward"
        r[k] = {
            "s": best(t[k]),
            "speedup_best": best(t[ref]) / best(t[k]),
            "speedup_median": median(t[ref]) / median(t[k]),
            "max_abs_diff": (results[k] - results[ref]).abs().max().item(),
            "bit_identical": torch.equal(results[k], results[ref]),
        }
        say(f"       {label:<34} {ms(r[k]['s']):>12}: {r[k]['speedup_best']:5.1f}x (best), {r[k]['speedup_median']:5.1f}x (median); "
            f"agrees to {r[k]['max_abs_diff']:.1e}, bit-identical: {r[k]['bit_identical']}")
    return r


# ── (iii) attribution patching ───────────────────────────────────────────────
def measure_attribution(cfg: Config, shapes: list[tuple[int, int]], repeats: int) -> list[dict]:
    model = cfg.model()
    out = []
    for batch, pos in shapes:
        clean, corrupted = token_pair(cfg, batch, pos)

        def forward(corrupted: torch.Tensor = corrupted) -> None:
            with torch.no_grad():
                model(corrupted)

        def heads(clean: torch.Tensor = clean, corrupted: torch.Tensor = corrupted) -> None:
            attribution_patching(model, clean, corrupted, logit_diff, ["z"])

        def every_site(clean: torch.Tensor = clean, corrupted: torch.Tensor = corrupted) -> None:
            attribution_patching(model, clean, corrupted, logit_diff)

        t = interleaved({"forward": forward, "z": heads, "all_sites": every_site}, repeats)
        r = {"batch": batch, "pos": pos, "forward_s": best(t["forward"]), "times": t}
        for k in ("z", "all_sites"):
            r[k] = {"s": best(t[k]), "fwd_equiv_best": best(t[k]) / best(t["forward"]),
                    "fwd_equiv_median": median(t[k]) / median(t["forward"])}
        say(f"   ({cfg.name}) batch {batch} x {pos}: forward {ms(r['forward_s'])}; heads x positions "
            f"{ms(r['z']['s'])} = {r['z']['fwd_equiv_best']:.2f} forwards (best), {r['z']['fwd_equiv_median']:.2f} (median); "
            f"every site {r['all_sites']['fwd_equiv_best']:.2f} (best), {r['all_sites']['fwd_equiv_median']:.2f} (median)"
            f"   (load {load()})")
        out.append(r)
    return out


# ── main ─────────────────────────────────────────────────────────────────────
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=["cache", "sweep", "attr"], help="one part (repeatable)")
    ap.add_argument("--configs", default="a,b", help="comma-separated: a, b")
    ap.add_argument("--batch", type=int, default=8, help="rows of the sweep's input (default 8)")
    ap.add_argument("--pos", type=int, default=32, help="tokens of the sweep's input (default 32)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 20 for (i) and (iii), 3 for (ii))")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 repeats, the sweep on (a) only")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.only or ["cache", "sweep", "attr"]
    configs = [CONFIGS[c] for c in args.configs.split(",")]
    fast_reps = args.repeats or (3 if args.quick else 20)
    sweep_reps = args.repeats or (1 if args.quick else 3)
    sweep_shape, big_shape = (args.batch, args.pos), (8, 128)

    say(f"seedbed read benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load {load()}")
    if os.getloadavg()[0] > (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        say(f"   note: load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs with {torch.get_num_threads()} threads: "
            "timings will be erratic; --threads 1 is steadier on a busy machine")
    for cfg in configs:
        say(f"   {cfg.describe()}")
    report: dict = {"threads": torch.get_num_threads(), "configs": {c.name: c.__dict__ for c in configs}}

    if "cache" in parts:
        say(f"\n── (i) run_with_cache(model, tokens), every hook point, vs a plain forward; {fast_reps} repeats; target <= 1.2x")
        report["cache"] = {c.name: measure_cache(c, [big_shape, sweep_shape], fast_reps) for c in configs}
    if "sweep" in parts:
        say(f"\n── (ii) patching every head at every position: batched vs one patch per forward; {sweep_reps} repeats; target >= 10x")
        sweep_configs = [c for c in configs if c.name == "a"] if args.quick else configs
        report["sweep"] = {c.name: measure_sweep(c, *sweep_shape, sweep_reps) for c in sweep_configs}
    if "attr" in parts:
        say(f"\n── (iii) attribution patching in forward-pass equivalents; {fast_reps} repeats; target < 3")
        report["attr"] = {c.name: measure_attribution(c, [sweep_shape, big_shape], fast_reps) for c in configs}

    say("\n── summary (best of the repeats; median in brackets)")
    for c in configs:
        if "cache" in report:
            say(f"   ({c.name}) cache everything / forward: " + "; ".join(
                f"{r['batch']}x{r['pos']} {r['ratio_best']:.2f}x [{r['ratio_median']:.2f}x]" for r in report["cache"][c.name]))
        if "sweep" in report and c.name in report["sweep"]:
            r = report["sweep"][c.name]
            say(f"   ({c.name}) patching sweep, {r['patches']} patches on {r['batch']}x{r['pos']}, faster than one per forward: "
                f"last-position metric {r['batched']['speedup_best']:.1f}x [{r['batched']['speedup_median']:.1f}x] "
                f"(declared: {r['batched_last']['speedup_best']:.1f}x [{r['batched_last']['speedup_median']:.1f}x]); "
                f"metric reading every position {r['batched_every']['speedup_best']:.1f}x [{r['batched_every']['speedup_median']:.1f}x]")
        if "attr" in report:
            say(f"   ({c.name}) attribution, heads x positions: " + "; ".join(
                f"{r['batch']}x{r['pos']} {r['z']['fwd_equiv_best']:.2f} [{r['z']['fwd_equiv_median']:.2f}] forwards"
                for r in report["attr"][c.name]) + "; every site: " + "; ".join(
                f"{r['batch']}x{r['pos']} {r['all_sites']['fwd_equiv_best']:.2f} [{r['all_sites']['fwd_equiv_median']:.2f}]"
                for r in report["attr"][c.name]))
    say(f"load average at end: {load()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
