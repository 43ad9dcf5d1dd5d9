"""Training throughput and MFU of seedbed against a plain nanoGPT-style PyTorch loop.

    python bench/grow.py                 # configs (a), (b) and the bf16 comparison
    python bench/grow.py --only a        # one part: a, b or bf16
    python bench/grow.py --quick         # smoke test, well under a minute
    python bench/grow.py --json out.json # also write the figures as JSON

For each config it measures, interleaved and repeated (the machine is shared and noisy):
  reference      a plain GPT written below (fused qkv nn.Linear, scaled_dot_product_attention,
                 GELU MLP, pre-LayerNorm, learned positions, untied unembedding without bias)
                 trained by a bare loop: forward, cross-entropy, backward, clip 1.0, AdamW as
                 nanoGPT configures it (decay on >=2-D params only; fused only on CUDA, so
                 foreach here);
  seedbed bare   seedbed's Transformer in exactly the same loop, on the same data tensors,
                 with the same optimiser: the cost of the model alone;
  (+ fused)      seedbed's Transformer in that loop with the optimiser grow() makes (fused AdamW);
  seedbed grow   the real `seedbed.grow.grow()` on repeated-blocks conditions of the same
                 shape; its own `train/tokens_per_s`, evaluating every `--warmup` steps so
                 that the figure covers the same steps the bare loops time (eval untimed).
Then bf16 vs fp32: grow() on config (b) with precision "bf16" and "fp32", same seed,
`--bf16-steps` steps each: tokens/s, the ratio, and train/loss side by side.
Then fine-tuning a child (`--only child`): grow() on config (a) from one parent's checkpoint,
`[train] only = ["unembed"]` against full growth, interleaved: the per-step time ratio (with
the body frozen, autograd never goes through it, so a step costs the forward and little more).

MFU = tokens/s * FLOPs/token / matmul peak, where FLOPs/token = 6 N + 12 L d_model T
(N = parameters without the position embeddings, as nanoGPT estimates it) and the peak is
the best fp32 GFLOP/s of large square matmuls measured in this same process.

Each figure is the best of `--repeats` measurements ("best run"); a second figure ("fast
steps") comes from the fastest fifth of all step times, which noise bursts on a shared
machine move less. For grow() the step times come from a global optimiser-step hook, which
changes nothing inside grow(). Ratios are of figures from the same run. bench/README.md
says more.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from common import load, say  # bench/ is on sys.path when a script here runs
from seedbed.conditions import parse
from seedbed.grow import grow, make_optimizer
from seedbed.model import Transformer
from seedbed.run import Run
from seedbed.soil import resolve


# ── the configs ──────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Config:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    block: int  # n_ctx: tokens per sequence
    batch: int
    vocab: int
    d_mlp: int

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.block


CONFIGS = {
    "a": Config("a", n_layers=2, d_model=128, n_heads=4, block=128, batch=32, vocab=96, d_mlp=512),
    "b": Config("b", n_layers=6, d_model=384, n_heads=6, block=256, batch=16, vocab=96, d_mlp=1536),
}


def conditions_dict(cfg: Config, steps: int, precision: str = "fp32", seed: int = 0, eval_every: int | None = None) -> dict:
    """Plain conditions for seedbed's grow(): repeated blocks, this shape, fp32 or bf16."""
    return {
        "name": f"bench-{cfg.name}",
        "seed": seed,
        "soil": {"kind": "repeated-blocks", "vocab_size": cfg.vocab, "block_min": 8, "block_max": min(32, cfg.block // 2)},
        "architecture": {
            "n_layers": cfg.n_layers,
            "d_model": cfg.d_model,
            "n_heads": cfg.n_heads,
            "d_mlp": cfg.d_mlp,
            "n_ctx": cfg.block,
            "dropout": 0.0,
            "tied_embeddings": False,
        },
        "optimizer": {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1, "grad_clip": 1.0},
        "schedule": {
            "steps": steps,
            "batch_size": cfg.batch,
            "warmup_steps": min(20, steps // 10),
            "decay": "cosine",
            "eval_every": eval_every or steps,  # grow() logs tokens/s over each window between evals
            "eval_batches": 1,
        },
        "checkpoints": {"log_until": 0, "every": 10**9},  # only step 0 and the end
        "device": "cpu",
        "precision": precision,
    }


# ── the reference: a plain nanoGPT-style GPT ─────────────────────────────────
class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.c_attn = nn.Linear(d_model, 3 * d_model)  # q, k and v in one matmul
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, d_mlp)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class GPTBlock(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = FeedForward(cfg.d_model, cfg.d_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block, cfg.d_model)
        self.h = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)  # untied, like seedbed's default
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layers))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def nanogpt_adamw(model: nn.Module) -> torch.optim.AdamW:
    """AdamW as nanoGPT sets it up: weight decay on matrices and embeddings only; fused only on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    on_cuda = all(p.is_cuda for p in params)
    kind = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), **kind)


# ── FLOPs and the matmul peak ───────────────────────────────────────────────
def params_without_positions(model: nn.Module) -> int:
    pos = model.wpe if isinstance(model, GPT) else model.pos_embed
    return sum(p.numel() for p in model.parameters()) - pos.weight.numel()


def flops_per_token(n_params: int, cfg: Config) -> float:
    return 6 * n_params + 12 * cfg.n_layers * cfg.d_model * cfg.block


def matmul_peak(dtype: torch.dtype, sizes=(2048, 3072, 4096), repeats: int = 3) -> tuple[float, int]:
    """Best GFLOP/s of square matmuls (torch's own thread count), and the size that gave it."""
    best, best_n = 0.0, 0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        c = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=c)  # warm up
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b, out=c)
            gflops = 2 * n**3 / (time.perf_counter() - t) / 1e9
            if gflops > best:
                best, best_n = gflops, n
        del a, b, c
    return best, best_n


# ── the measurements ─────────────────────────────────────────────────────────
def make_batches(cfg: Config, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) from the same soil grow() trains on: repeated random blocks."""
    _, soil = resolve(parse(conditions_dict(cfg, steps=1)))
    out = []
    for i in range(count):
        b = soil.train_batch(10_000 + i, cfg.batch)
        out.append((b.inputs.contiguous(), b.targets.contiguous()))
    return out


def seedbed_model(cfg: Config) -> Transformer:
    cond, _ = resolve(parse(conditions_dict(cfg, steps=1)))
    return Transformer(cond.architecture, seed=0)


def seedbed_optimizer(model: nn.Module, cond) -> torch.optim.Optimizer:
    """The optimiser grow() makes."""
    return make_optimizer(model, cond.optimizer)


def bare_loop(model: nn.Module, opt: torch.optim.Optimizer, batches, warmup: int, steps: int) -> dict:
    """The plain loop: forward, loss, backward, clip 1.0, step. Returns timings of the timed steps."""
    model.train()
    params = [p for p in model.parameters()]
    times, warm, loss = [], [], float("nan")
    for i in range(warmup + steps):
        x, y = batches[i % len(batches)]
        t = time.perf_counter()
        logits = model(x)
        loss_t = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss_t.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = loss_t.item()
        (times if i >= warmup else warm).append(time.perf_counter() - t)
    return {"seconds": sum(times), "step_s": times, "warmup_s": sum(warm), "loss": loss}


def measure_bare(which: str, cfg: Config, batches, warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    if which == "reference":
        model = GPT(cfg)
        opt = nanogpt_adamw(model)
    elif which == "seedbed_bare":
        model = seedbed_model(cfg)
        opt = nanogpt_adamw(model)  # the reference's optimiser: only the model differs
    elif which == "seedbed_bare_fusedopt":
        model = seedbed_model(cfg)
        cond, _ = resolve(parse(conditions_dict(cfg, steps=1)))
        opt = seedbed_optimizer(model, cond)  # seedbed's own optimiser (fused AdamW)
    else:
        raise ValueError(which)
    r = bare_loop(model, opt, batches, warmup, steps)
    r["tokens_per_s"] = cfg.tokens_per_step * steps / r["seconds"]
    r["n_params"] = params_without_positions(model)
    return r


def measure_grow(cfg: Config, steps: int, precision: str = "fp32", seed: int = 0, warmup: int = 0, extra: dict | None = None) -> dict:
    """The real grow() in a temp runs dir; its own train/tokens_per_s and the loss it logged.

    With `warmup`, grow() evaluates every `warmup` steps, so its first tokens/s window
    holds the warmup steps and the figure returned covers only the later windows,
    the same steps that the bare loops time (grow() leaves eval time out of tokens/s).

    A global optimiser-step hook (no change to grow) also stamps the end of every
    step, so the time of each whole loop iteration is known too: a figure that
    noise bursts on this shared machine cannot move as much. `extra`: more conditions ([init], [train]).
    """
    cond = parse(conditions_dict(cfg, steps, precision, seed, eval_every=warmup or None) | (extra or {}))
    stamps: list[float] = []
    handle = register_optimizer_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
    try:
        with tempfile.TemporaryDirectory(prefix="seedbed-bench-") as runs_dir:
            t = time.perf_counter()
            grow(cond, runs_dir=runs_dir, name=f"bench-{cfg.name}-{precision}", progress=False, console=_quiet_console())
            wall = time.perf_counter() - t
            run = Run.open(Path(runs_dir) / f"bench-{cfg.name}-{precision}", readonly=True)
            try:
                tps = run.metric("train/tokens_per_s")
                loss = dict(run.metric("train/loss"))
                eval_loss = run.last_metric("eval/loss")
            finally:
                run.close()
    finally:
        handle.remove()
    assert tps and tps[-1][0] == steps, tps
    assert len(stamps) == steps, (len(stamps), steps)
    step_s = [b - a for a, b in zip(stamps, stamps[1:])]  # steps 2..n, each a whole loop iteration
    ends = [s for s, _ in tps]
    window_s = [(end - start) * cfg.tokens_per_step / v for start, end, v in zip([0] + ends, ends, (v for _, v in tps))]
    timed = slice(1, None) if warmup and len(tps) > 1 else slice(None)  # drop the warmup window
    timed_steps = sum(end - start for start, end in list(zip([0] + ends, ends))[timed])
    return {
        "tokens_per_s": timed_steps * cfg.tokens_per_step / sum(window_s[timed]),
        "step_s": step_s,
        # grow() times from just before step 1; the hook's intervals start at the end of step 1
        "first_step_s": window_s[0] - sum(step_s[: ends[0] - 1]),
        "wall_s": wall,
        "steps": steps,
        "train_loss": loss.get(steps),
        "train_loss_curve": sorted(loss.items()),
        "eval_loss": eval_loss,
    }


def _quiet_console():
    from rich.console import Console

    global _QUIET
    if _QUIET is None:
        _QUIET = Console(file=open(os.devnull, "w"))
    return _QUIET


_QUIET = None


def fast_step(times: list[float]) -> float:
    """Mean of the fastest fifth of the step times (at least one): the cost of a step when
    nothing else is running. On a shared machine a burst of someone else's work can make
    a few steps many times slower (two OpenMP threads on two busy cores); this figure
    drops those steps, so it is steadier than a mean over whole runs, though optimistic.
    """
    fastest = sorted(times)[: max(1, len(times) // 5)]
    return sum(fastest) / len(fastest)


# ── reporting ────────────────────────────────────────────────────────────────
LABELS = {
    "reference": "reference (nanoGPT-style)",
    "seedbed_bare": "seedbed model, bare loop",
    "seedbed_bare_fusedopt": "  + seedbed's fused AdamW",
    "seedbed_grow": "seedbed grow()",
}


def measure_config(cfg: Config, steps: int, warmup: int, repeats: int, extra_fused: bool) -> dict[str, list[dict]]:
    """Every kind of measurement, interleaved, `repeats` times."""
    batches = make_batches(cfg, 8)
    kinds = ["reference", "seedbed_bare"] + (["seedbed_bare_fusedopt"] if extra_fused else []) + ["seedbed_grow"]
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    say(f"\n── config ({cfg.name}): {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, "
        f"block {cfg.block}, batch {cfg.batch}, vocab {cfg.vocab}, d_mlp {cfg.d_mlp}, fp32")
    say(f"   bare loops: {warmup} warmup + {steps} timed steps; grow(): {warmup + steps} steps, its own "
        f"train/tokens_per_s over the last {steps} (evals every {warmup}, not timed); {repeats} interleaved repeats")
    for r in range(repeats):
        for k in kinds:
            gc.collect()
            if k == "seedbed_grow":
                res = measure_grow(cfg, warmup + steps, warmup=warmup)
                cut = max(0, warmup - 1)
                res["warmup_s"] = res["first_step_s"] + sum(res["step_s"][:cut])
                res["step_s"] = res["step_s"][cut:]  # the steps the bare loops time
                res["seconds"] = sum(res["step_s"])
            else:
                res = measure_bare(k, cfg, batches, warmup, steps)
            runs[k].append(res)
            fast = cfg.tokens_per_step / fast_step(res["step_s"])
            say(f"   repeat {r + 1}/{repeats}  {k:<22} {res['tokens_per_s']:>10,.0f} tok/s   "
                f"(fast steps {fast:>8,.0f} tok/s; load {load()})")
    runs["n_params"] = [runs["reference"][0]["n_params"], runs["seedbed_bare"][0]["n_params"]]  # type: ignore[list-item]
    return runs


def report_config(cfg: Config, runs: dict, peak: float) -> dict:
    n_ref, n_sb = runs.pop("n_params")
    assert n_ref == n_sb, f"the reference has {n_ref} parameters, seedbed {n_sb}: the models differ"
    fpt = flops_per_token(n_ref, cfg)
    out = {"config": cfg.__dict__, "n_params_no_pos": n_ref, "flops_per_token": fpt, "peak_fp32_gflops": peak, "results": {}}
    for k, rs in runs.items():
        tps = [x["tokens_per_s"] for x in rs]
        pooled = [t for x in rs for t in x["step_s"]]
        best = max(tps)
        out["results"][k] = {
            "tokens_per_s": best,  # the best whole-measurement figure
            "tokens_per_s_each_repeat": tps,
            "warmup_s_each_repeat": [x["warmup_s"] for x in rs],
            "tokens_per_s_fast_steps": cfg.tokens_per_step / fast_step(pooled),
            "mfu": best * fpt / (peak * 1e9),
        }
    ref = out["results"]["reference"]
    for v in out["results"].values():
        v["vs_reference"] = v["tokens_per_s"] / ref["tokens_per_s"]
        v["mfu_fast_steps"] = v["tokens_per_s_fast_steps"] * fpt / (peak * 1e9)
        v["vs_reference_fast_steps"] = v["tokens_per_s_fast_steps"] / ref["tokens_per_s_fast_steps"]

    say(f"\n   config ({cfg.name}): N = {n_ref:,} parameters without positions, {fpt / 1e6:.2f} MFLOP/token, "
        f"{cfg.tokens_per_step:,} tokens/step; fp32 matmul peak {peak:,.1f} GFLOP/s")
    say(f"   {'':<28}{'best run':>11}{'MFU':>8}{'vs ref':>8}  |{'fast steps':>11}{'MFU':>8}{'vs ref':>8}")
    say(f"   {'':<28}{'tok/s':>11}{'':>16}  |{'tok/s':>11}")
    for k, v in out["results"].items():
        say(f"   {LABELS[k]:<28}{v['tokens_per_s']:>11,.0f}{v['mfu']:>8.1%}{v['vs_reference']:>8.3f}  |"
            f"{v['tokens_per_s_fast_steps']:>11,.0f}{v['mfu_fast_steps']:>8.1%}{v['vs_reference_fast_steps']:>8.3f}")
    g, r = out["results"]["seedbed_grow"], out["results"]["reference"]
    say(f"   the untimed first steps took (s, per repeat): reference "
        f"{', '.join(f'{x:.2f}' for x in r['warmup_s_each_repeat'])}; grow() "
        f"{', '.join(f'{x:.2f}' for x in g['warmup_s_each_repeat'])}")
    return out


def measure_bf16(steps: int) -> dict:
    cfg = CONFIGS["b"]
    say(f"\n── bf16 vs fp32: seedbed grow() on config (b), {steps} steps each, same seed and conditions")
    res = {}
    for precision in ("fp32", "bf16"):
        gc.collect()
        res[precision] = r = measure_grow(cfg, steps, precision)
        say(f"   {precision}: {r['tokens_per_s']:,.0f} tok/s, train/loss@{steps} {r['train_loss']:.4f}, "
            f"eval/loss {r['eval_loss']:.4f}, wall {r['wall_s']:.0f}s   (load {load()})")
    return res


def report_bf16(res: dict, peak32: float, peak16: float) -> dict:
    cfg = CONFIGS["b"]
    steps = res["fp32"]["steps"]
    fpt = flops_per_token(params_without_positions(seedbed_model(cfg)), cfg)
    for r in res.values():
        r["tokens_per_s_fast_steps"] = cfg.tokens_per_step / fast_step(r["step_s"])
    ratio = res["bf16"]["tokens_per_s"] / res["fp32"]["tokens_per_s"]
    ratio_fast = res["bf16"]["tokens_per_s_fast_steps"] / res["fp32"]["tokens_per_s_fast_steps"]
    say(f"\n   bf16 vs fp32, grow() on config (b), {steps} steps; matmul peaks fp32 {peak32:,.1f}, "
        f"bf16 {peak16:,.1f} GFLOP/s ({peak16 / peak32:.2f}x)")
    say(f"   {'':<6}{'tok/s':>9}{'of fp32 pk':>11}{'of bf16 pk':>11}  |{'fast steps':>11}  |"
        f"{'train/loss@' + str(steps):>16}{'eval/loss':>10}")
    for p in ("fp32", "bf16"):
        r = res[p]
        g = r["tokens_per_s"] * fpt / 1e9
        say(f"   {p:<6}{r['tokens_per_s']:>9,.0f}{g / peak32:>11.1%}{g / peak16:>11.1%}  |"
            f"{r['tokens_per_s_fast_steps']:>11,.0f}  |{r['train_loss']:>16.4f}{r['eval_loss']:>10.4f}")
    say(f"   bf16 / fp32 tokens/s: {ratio:.3f}x (whole runs), {ratio_fast:.3f}x (fast steps); "
        f"train/loss@{steps} difference bf16 - fp32 = {res['bf16']['train_loss'] - res['fp32']['train_loss']:+.4f}")
    say("   train/loss along the way (same batches in both runs; mean of 10 steps ending at each step):")
    curves = {p: dict(res[p].pop("train_loss_curve")) for p in ("fp32", "bf16")}
    marks = sorted({min(steps, max(10, round(steps * f / 8))) for f in range(1, 9)})
    for p in ("fp32", "bf16"):
        c = curves[p]
        row = "".join(f"{statistics.fmean(c[s] for s in range(m - 9, m + 1) if s in c):>8.4f}" for m in marks)
        say(f"   {p:<6}" + row)
    say(f"   {'step':<6}" + "".join(f"{m:>8d}" for m in marks))
    for p in ("fp32", "bf16"):
        res[p]["train_loss_mean_last_10"] = statistics.fmean(curves[p][s] for s in range(steps - 9, steps + 1) if s in curves[p])
        res[p]["train_loss_every_step"] = [curves[p].get(s) for s in range(1, steps + 1)]
    for r in res.values():
        r.pop("step_s")
    return {"steps": steps, "fp32": res["fp32"], "bf16": res["bf16"], "bf16_over_fp32": ratio,
            "bf16_over_fp32_fast_steps": ratio_fast, "peak_fp32_gflops": peak32, "peak_bf16_gflops": peak16,
            "flops_per_token": fpt}


def measure_child(steps: int, warmup: int, repeats: int) -> dict:
    """Fine-tuning only the unembedding against full growth: both children of one parent (config (a)), interleaved."""
    cfg = CONFIGS["a"]
    say(f"\n── fine-tuning a child on config (a): [train] only = [\"unembed\"] vs full growth, both from one parent's "
        f"checkpoint; grow(), {warmup} + {steps} steps, {repeats} interleaved repeats")
    kinds = {"full": {}, "only_unembed": {"train": {"only": ["unembed"]}}}
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="seedbed-bench-parent-") as parent_dir:
        grow(parse(conditions_dict(cfg, steps=2)), runs_dir=parent_dir, name="parent", progress=False, console=_quiet_console())
        for r in range(repeats):
            for k, train in kinds.items():
                gc.collect()
                res = measure_grow(cfg, warmup + steps, warmup=warmup, extra={"init": {"from": f"{parent_dir}/parent"}, **train})
                res["step_s"] = res["step_s"][max(0, warmup - 1):]
                runs[k].append(res)
                say(f"   repeat {r + 1}/{repeats}  {k:<14} {res['tokens_per_s']:>10,.0f} tok/s   "
                    f"(fast steps {cfg.tokens_per_step / fast_step(res['step_s']):>8,.0f} tok/s; load {load()})")
    out: dict = {}
    for k, rs in runs.items():
        pooled = [t for x in rs for t in x["step_s"]]
        out[k] = {"tokens_per_s": max(x["tokens_per_s"] for x in rs), "step_s_fast": fast_step(pooled),
                  "step_s_median": statistics.median(pooled)}
    full, only = out["full"], out["only_unembed"]
    out["step_time_ratio"] = full["tokens_per_s"] / only["tokens_per_s"]  # per-step time, only unembed / full
    out["step_time_ratio_fast_steps"] = only["step_s_fast"] / full["step_s_fast"]
    out["step_time_ratio_median"] = only["step_s_median"] / full["step_s_median"]
    say(f"   per-step time, only unembed / full growth: {out['step_time_ratio']:.3f} (best run), "
        f"{out['step_time_ratio_fast_steps']:.3f} (fast steps), {out['step_time_ratio_median']:.3f} (median step); "
        f"full {full['tokens_per_s']:,.0f} tok/s, only unembed {only['tokens_per_s']:,.0f} tok/s")
    return out


class Peak:
    """The best matmul GFLOP/s seen so far: measured at the start and again between parts,
    because a peak taken while someone else's job runs would inflate every MFU."""

    def __init__(self, dtype: torch.dtype, sizes: tuple[int, ...]) -> None:
        self.dtype, self.sizes, self.best, self.all = dtype, sizes, 0.0, []

    def measure(self) -> float:
        g, n = matmul_peak(self.dtype, self.sizes)
        self.all.append(round(g, 1))
        self.best = max(self.best, g)
        say(f"{str(self.dtype).removeprefix('torch.')} matmul peak: {g:,.1f} GFLOP/s (best of {self.sizes} square, at {n}); "
            f"best so far {self.best:,.1f}   (load {load()})")
        return self.best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: 30 for (a), 10 for (b))")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before each bare-loop measurement")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats per measurement, the best counts (default: 5 for (a), 3 for (b))")
    ap.add_argument("--bf16-steps", type=int, default=200, help="steps of the bf16-vs-fp32 grow() comparison")
    ap.add_argument("--only", choices=["a", "b", "bf16", "child"], action="append", help="run only this part (repeatable)")
    ap.add_argument("--quick", action="store_true", help="tiny step counts: a smoke test")
    ap.add_argument("--no-fused-variant", action="store_true", help="skip seedbed's model with seedbed's fused AdamW in the bare loop")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    parts = args.only or ["a", "b", "bf16", "child"]
    steps = {"a": args.steps or 30, "b": args.steps or 10}
    repeats = {"a": args.repeats or 5, "b": args.repeats or 3}
    bf16_steps, warmup = args.bf16_steps, args.warmup
    if args.quick:  # a smoke test: every path runs, the figures mean little
        steps = {"a": min(steps["a"], 3), "b": min(steps["b"], 1)}
        bf16_steps, warmup, repeats = min(bf16_steps, 2), min(warmup, 1), {"a": 1, "b": 1}

    say(f"seedbed grow() benchmark   {time.strftime('%Y-%m-%d %H:%M:%S')}")
    say(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, python {platform.python_version()}")
    say(f"load average (1, 5, 15 min) at start: {load()}")
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_at_start": os.getloadavg(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "argv": sys.argv[1:]}

    sizes = (1024,) if args.quick else (2048, 3072, 4096)
    peak32 = Peak(torch.float32, sizes)
    peak16 = Peak(torch.bfloat16, sizes) if "bf16" in parts else None
    peak32.measure()
    if peak16:
        peak16.measure()

    raw: dict = {}
    for name in ("a", "b"):
        if name in parts:
            raw[name] = measure_config(CONFIGS[name], steps[name], warmup, repeats[name], not args.no_fused_variant)
            if not args.quick:
                peak32.measure()
    if "bf16" in parts:
        raw["bf16"] = measure_bf16(bf16_steps)
        if not args.quick:
            peak32.measure()
            peak16.measure()

    if "child" in parts:
        report["child"] = measure_child(steps["a"], warmup, repeats["a"])

    say(f"\n══ results (each MFU against the best matmul peak of this run: fp32 {peak32.best:,.1f} GFLOP/s)")
    say("   best run = best of the repeats' whole-measurement tokens/s (for grow(): its train/tokens_per_s);")
    say("   fast steps = from the fastest fifth of all step times (noise bursts dropped; optimistic)")
    for name in ("a", "b"):
        if name in raw:
            report[name] = report_config(CONFIGS[name], raw[name], peak32.best)
    if "bf16" in raw:
        report["bf16"] = report_bf16(raw["bf16"], peak32.best, peak16.best)
    report["peak_fp32_gflops"], report["peak_fp32_all"] = peak32.best, peak32.all
    if peak16:
        report["peak_bf16_gflops"], report["peak_bf16_all"] = peak16.best, peak16.all

    say("\n── summary")
    for name in ("a", "b"):
        if name in report:
            r = report[name]["results"]
            say(f"   ({name}) reference {r['reference']['tokens_per_s']:,.0f} tok/s = {r['reference']['mfu']:.1%} MFU; "
                f"seedbed bare {r['seedbed_bare']['tokens_per_s']:,.0f} ({r['seedbed_bare']['mfu']:.1%}, "
                f"{r['seedbed_bare']['vs_reference']:.3f}x); seedbed grow {r['seedbed_grow']['tokens_per_s']:,.0f} "
                f"({r['seedbed_grow']['mfu']:.1%}, {r['seedbed_grow']['vs_reference']:.3f}x of the reference)")
    if "bf16" in report:
        b = report["bf16"]
        say(f"   (bf16) grow on (b): bf16 {b['bf16']['tokens_per_s']:,.0f} tok/s vs fp32 {b['fp32']['tokens_per_s']:,.0f} "
            f"= {b['bf16_over_fp32']:.3f}x; train/loss@{b['steps']}: bf16 {b['bf16']['train_loss']:.4f}, "
            f"fp32 {b['fp32']['train_loss']:.4f}")
    if "child" in report:
        c = report["child"]
        say(f"   (child) only unembed vs full growth on (a): per-step time {c['step_time_ratio']:.3f}x "
            f"({c['step_time_ratio_fast_steps']:.3f}x fast steps)")
    say(f"load average at end: {load()}")
    report["load_at_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        say(f"wrote {args.json}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
