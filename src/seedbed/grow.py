"""Grow: the training loop. Forward, loss, backward, clip, step; eval and checkpoints on a schedule.

It knows nothing about trials: observers are plain callables `(model, step) -> {name: value}`.

Determinism: the weights start from the seed alone, every batch is a function of
(seed, cursor), the learning rate is a function of the step, and each checkpoint
keeps the optimiser and RNG states. So the same conditions give the same weights
bit for bit on one machine, and a resumed run continues exactly where it stopped.

Data parallel: under torchrun each rank takes its share of the same global batch;
the loss is normalised by the *global* number of loss tokens, so summing gradients
over ranks gives exactly the gradient of the single-process loss.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from seedbed import checkpoint
from seedbed import conditions as conditions_module
from seedbed.conditions import Conditions, Optimizer, Schedule, package_versions
from seedbed.contained import remove_tree
from seedbed.errors import SeedbedError
from seedbed.model import Transformer
from seedbed.run import Run
from seedbed.soil import Batch, SoilBase, make_soil, resolve

Observer = Callable[[nn.Module, int], dict[str, float]]
# Told what was observed at a step, once it is stored in the run; returns steps to keep
# a checkpoint of: recent past ones (from snapshots kept in memory) or future ones.
Listener = Callable[[Run, int, dict[str, float]], Iterable[int]]

RECENT_SNAPSHOTS = 8  # observed steps whose checkpoint stays in memory, for a listener to keep
SNAPSHOT_BUDGET = 256 * 2**20  # bytes of memory those snapshots may take


class Interrupted(Exception):
    """Growth stopped by Ctrl-C / SIGTERM after saving a checkpoint."""


# ── the pieces ───────────────────────────────────────────────────────────────
@dataclass
class Distributed:
    """Who we are under torchrun (rank, world size); a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process started the process group, so it must end it

    @classmethod
    def from_env(cls, backend: str) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if backend == "nccl":  # one GPU per process, chosen before NCCL starts
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        owns = not torch_dist.is_initialized()
        if owns:
            torch_dist.init_process_group(backend)
        return cls(torch_dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")), owns)

    def close(self, together: bool) -> None:
        """End the process group this process started. Left to the interpreter's exit, gloo's threads can
        outlive it and abort the process ("terminate called without an active exception"), failing a
        finished run. `together`: every rank got here normally, so wait for the others first."""
        if not self.owns_group:
            return
        if together:
            torch_dist.barrier()
        torch_dist.destroy_process_group()
        self.owns_group = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()

    def share(self, obj: object) -> object:
        """Rank 0's value of `obj`, on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]


def pick_device(want: str, dist: Distributed) -> torch.device:
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SeedbedError("device = \"cuda\" but no CUDA GPU is visible: set device = \"auto\" or \"cpu\"")
    return torch.device("cuda", dist.local_rank)


def learning_rate(step: int, opt: Optimizer, sched: Schedule) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio · lr` (or constant)."""
    if step < sched.warmup_steps:
        return opt.lr * (step + 1) / sched.warmup_steps
    if sched.decay == "constant":
        return opt.lr
    progress = (step - sched.warmup_steps) / max(1, sched.steps - sched.warmup_steps)
    floor = sched.min_lr_ratio
    return opt.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: nn.Module, o: Optimizer) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying gains and biases only hurts."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel is one pass over all parameters (CPU and CUDA); it is deterministic.
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=True)


def loss_targets(batch: Batch, loss_on: str) -> Tensor:
    """Targets with positions outside the loss set to -100 (cross_entropy's ignore_index)."""
    targets = batch.targets
    if loss_on == "all":
        return targets
    if loss_on == "answer":
        keep = batch.answer
    else:  # "last"
        keep = torch.zeros_like(batch.answer)
        keep[:, -1] = True
    return targets.masked_fill(~keep, -100)


def loss_dtype(cond: Conditions) -> torch.dtype:
    """float64 where a tiny loss would round away in float32 (Nanda et al. compute it so for grokking)."""
    return torch.float64 if cond.objective.loss_dtype == "float64" else torch.float32


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def eval_batches(soil: SoilBase, cond: Conditions) -> Iterator[Batch]:
    """The held-out batches, one at a time: however many there are, only one is in memory."""
    size = cond.schedule.batch_size
    if soil.eval_size is None:
        for i in range(cond.schedule.eval_batches):
            yield soil.eval_batch(i, size)
        return
    # a fixed test set: all of it, in chunks; the last chunk is cut to the set's end
    chunk = min(size, 4096, soil.eval_size)
    n_chunks = math.ceil(soil.eval_size / chunk)
    for i in range(n_chunks):
        batch = soil.eval_batch(i, chunk)
        yield batch if i < n_chunks - 1 else batch.rows(slice(0, soil.eval_size - chunk * (n_chunks - 1)))


@torch.no_grad()
def evaluate(model: nn.Module, soil: SoilBase, cond: Conditions, device: torch.device, stop: list[bool] | None = None) -> dict[str, float]:
    """Held-out loss and accuracy on the objective's positions, plus the soil's own metrics.

    A stop request (`stop[0]`, set by Ctrl-C) abandons the evaluation and returns {}: a long
    evaluation must not keep a run from saving its checkpoint and stopping.
    """
    model.eval()
    loss_sum = correct_sum = count = rows = 0.0
    extra: dict[str, float] = {}
    for batch in eval_batches(soil, cond):
        if stop is not None and stop[0]:
            model.train()
            return {}
        batch = batch.to(device)
        with autocast(device, cond.precision):
            logits = model(batch.inputs)
        # every position's loss and correctness (the soil's metrics may look anywhere); the objective's mask on top
        per_token = F.cross_entropy(logits.to(loss_dtype(cond)).flatten(0, 1), batch.targets.flatten(), reduction="none").view(batch.targets.shape)
        correct = logits.argmax(-1) == batch.targets
        mask = loss_targets(batch, cond.objective.loss_on) != -100
        loss_sum += per_token[mask].sum().item()
        correct_sum += correct[mask].sum().item()
        count += mask.sum().item()
        n = batch.tokens.shape[0]
        for k, v in soil.eval_metrics(per_token, correct, batch).items():
            extra[k] = extra.get(k, 0.0) + v * n
        rows += n
    model.train()
    out = {"eval/loss": loss_sum / max(count, 1), "eval/accuracy": correct_sum / max(count, 1)}
    out.update({f"eval/{k}": v / rows for k, v in extra.items()})
    return out


@contextmanager
def catch_stop_signals() -> Iterator[list[bool]]:
    """Turn Ctrl-C / SIGTERM into a flag the loop checks between steps (so a step is never half-done)."""
    flag = [False]

    def handler(signum, frame):  # noqa: ARG001
        if flag[0]:  # asked twice: stop now, without saving
            raise KeyboardInterrupt
        flag[0] = True

    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: no signal handling
        yield flag
        return
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def make_progress(console: Console, total: int, start: int) -> Progress:
    progress = Progress(
        TextColumn("[bold]grow[/]"),
        BarColumn(),
        TextColumn("step {task.completed:,.0f}/{task.total:,.0f}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("held-out {task.fields[eval_loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    progress.add_task("grow", total=total, completed=start, loss="–", eval_loss="–", tps="–")
    return progress


# ── the loop ─────────────────────────────────────────────────────────────────
def grow(
    conditions: Conditions | None = None,
    *,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    resume: str | Path | None = None,
    observers: Sequence[Observer] = (),
    observe_every: int | None = None,
    listeners: Sequence[Listener] = (),
    progress: bool = True,
    console: Console | None = None,
) -> Run:
    """Grow a new run from `conditions`, or continue the run at `resume`. Returns the Run.

    `observers` are called at step 0, at every eval and checkpoint step and every
    `observe_every` steps; what they return is stored in the run, and their cost is
    logged as `time/observe_s` against `time/train_s`. `listeners` then hear every
    observation and may ask for checkpoints around what they saw.

    Raises `Interrupted` after saving a checkpoint if stopped by a signal.
    """
    console = console or Console()
    if (conditions is None) == (resume is None):
        raise SeedbedError("give a conditions file (seedbed grow examples/induction.toml) or --resume runs/NAME, not both")

    if resume is not None:
        run_path = Path(resume)
        Run.check_exists(run_path)
        refuse_if_diverged(run_path)
        saved = conditions_module.load(run_path / "conditions.toml")
        soil = make_soil(saved)
        if soil.artifacts() != Run.read_artifacts(run_path):
            raise SeedbedError(
                f"the soil of '{run_path}' has changed since it was grown (its corpus or tokenizer differ): "
                "restore the original files, or grow a new run"
            )
        cond, soil = resolve(saved, soil)
        if cond.versions != package_versions():
            console.print(f"[yellow]note: this run was grown with {cond.versions}; now {package_versions()}: bitwise identity is not promised across versions", soft_wrap=True)
    else:
        assert conditions is not None
        cond, soil = resolve(conditions)
        cond = cond.model_copy(update={"versions": package_versions()})
        run_path = Run.check_new(Path(runs_dir), name or cond.name or "run")

    backend = "nccl" if cond.device != "cpu" and torch.cuda.is_available() else "gloo"
    dist = Distributed.from_env(backend)
    try:
        run = _start(cond, soil, run_path, runs_dir, resume is not None, dist, observers, observe_every, listeners, progress, console)
    except BaseException:
        dist.close(together=False)  # a barrier could wait forever for a rank that failed elsewhere
        raise
    dist.close(together=True)
    return run


def _start(cond, soil, run_path, runs_dir, resuming, dist, observers, observe_every, listeners, progress, console) -> Run:
    """Make (or open) the run folder and lock it, then grow; a new run that fails before its first
    checkpoint is removed, so that a failed start never takes the name."""
    device = pick_device(cond.device, dist)
    say = (lambda m: console.print(m, soft_wrap=True, highlight=False)) if dist.main else (lambda m: None)
    if observe_every is not None and observe_every < 1:
        raise SeedbedError(f"observe_every={observe_every}: observe every 1 or more steps")
    if dist.world > 1:
        if cond.schedule.batch_size < dist.world:
            raise SeedbedError(f"schedule.batch_size={cond.schedule.batch_size} is smaller than {dist.world} processes: raise it")

    run = None
    if not resuming:
        dist.barrier()  # every rank has checked the name before rank 0 creates the folder
    if dist.main:
        run = Run.open(run_path) if resuming else Run.create(Path(runs_dir), run_path.name, cond, soil.artifacts())
    try:
        if dist.main:
            run.hold_lock()
        try:
            watching = Watching(observers, observe_every, listeners)
            return _grow(cond, soil, run, run_path, resuming, dist, device, watching, progress, console, say)
        finally:
            if dist.main:
                run.release_lock()
    except BaseException:
        if run is not None and not resuming:
            discard_if_unstarted(run)
        raise


def discard_if_unstarted(run: Run) -> None:
    """Remove a run this call created if it has no step-0 checkpoint: it holds nothing worth keeping."""
    try:
        started = any(r.step == 0 for r in run.checkpoints())
    except sqlite3.Error:  # an index that cannot even be read (a full disk)
        started = False
    if not started:
        run.close()
        try:
            remove_tree(run.path.parent, run.path.name)
        except (OSError, SeedbedError):  # keep the error that stopped growth, not this one
            pass


def refuse_if_diverged(run_path: Path) -> None:
    """A diverged run would diverge again at the same step (its conditions are fixed): say so instead."""
    reader = Run.open(run_path, readonly=True)
    try:
        step = reader.diverged_at()
    finally:
        reader.close()
    if step is not None:
        raise SeedbedError(
            f"run '{run_path}' diverged at step {step}: resuming it would diverge again at the same step; grow a new run "
            f"from its conditions.toml with a lower optimizer.lr (its checkpoints up to step {step - 1} stay readable)"
        )


@dataclass
class Watching:
    """Observers, their schedule and their cost; listeners and the checkpoints they ask for."""

    observers: Sequence[Observer]
    every: int | None
    listeners: Sequence[Listener]

    def __post_init__(self) -> None:
        self.observe_s = self.train_s = 0.0  # cumulative seconds, carried across resumes via the run
        self.extra_checkpoints: set[int] = set()
        self.recent: deque[checkpoint.Encoded] = deque(maxlen=RECENT_SNAPSHOTS)

    def due(self, step: int, checkpointing: bool, eval_every: int) -> bool:
        if not self.observers:
            return False
        return checkpointing or step % eval_every == 0 or (self.every is not None and step % self.every == 0)

    def observe(self, model: nn.Module, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        out: dict[str, float] = {}
        for observe in self.observers:
            out.update(observe(model, step))
        self.observe_s += time.perf_counter() - t0
        return out

    def hear(self, run: Run, step: int, observed: dict[str, float], snapshot: Callable[[], checkpoint.Encoded] | None) -> None:
        """Tell the listeners; write the recent snapshots they ask for, remember the future steps."""
        if not self.listeners:
            return
        if snapshot is not None:
            enc = snapshot()
            if len(enc.weights) + len(enc.state) <= SNAPSHOT_BUDGET // RECENT_SNAPSHOTS:
                self.recent.append(enc)
        wanted = {int(s) for listen in self.listeners for s in listen(run, step, observed)}
        have = {r.step for r in run.checkpoints()}
        for enc in self.recent:
            if enc.step in wanted and enc.step not in have:
                checkpoint.write(run, enc)
        self.extra_checkpoints.update(s for s in wanted if s > step)


def _grow(cond, soil, run, run_path, resuming, dist, device, watching, progress, console, say) -> Run:  # noqa: C901
    sched, total = cond.schedule, cond.schedule.steps
    batch_size = sched.batch_size
    tokens_per_step = batch_size * soil.seq_len

    model = Transformer(cond.architecture, seed=cond.seed).to(device)
    opt = make_optimizer(model, cond.optimizer)
    torch.manual_seed(cond.seed + dist.rank)  # only dropout draws from the global RNG
    params = list(model.parameters())
    start = 0

    def snapshot_now(step: int) -> Callable[[], checkpoint.Encoded] | None:
        # recent checkpoints kept in memory only in a single process: a past checkpoint
        # would need every rank's RNG state, gathered at that step
        return (lambda: checkpoint.encode(model, step, step * tokens_per_step, _state(opt, step, dist, device))) if dist.world == 1 else None

    def observe(step: int, metrics: dict[str, float]) -> None:
        """Observe (main process only), store everything measured at `step`, tell the listeners."""
        observed = finite(watching.observe(model, step))
        metrics.update(observed)
        if watching.observers:
            metrics.update({"time/observe_s": watching.observe_s, "time/train_s": watching.train_s})
        run.log_metrics(step, finite(metrics))
        run.commit()
        watching.hear(run, step, observed, snapshot_now(step))

    if resuming:
        start = _restore(run, run_path, model, opt, dist, total, say)
        if start is None:
            return run
        if dist.main:
            watching.observe_s = run.last_metric("time/observe_s") or 0.0
            watching.train_s = run.last_metric("time/train_s") or 0.0
    else:
        if dist.main:
            run.log_event(0, "start", f"growing {run.name}: {model.n_params():,} parameters, {total:,} steps")
        _save(run if dist.main else None, model, opt, 0, tokens_per_step, dist)
        if dist.main and watching.observers:
            observe(0, {})

    share = torch.arange(batch_size).tensor_split(dist.world)[dist.rank]  # this rank's rows of the global batch
    my_rows = slice(int(share[0]), int(share[-1]) + 1)
    bar = make_progress(console, total, start) if progress and dist.main else None
    eval_time = 0.0  # seconds in evals and observers
    steps_since, train_time_then = 0, watching.train_s  # for tokens/s over the steps since the last eval

    with catch_stop_signals() as stop, (bar or nullcontext()):
        step = start
        while step < total:
            t0 = time.perf_counter()
            rng_before = torch.get_rng_state()  # dropout's draws, undone if this step diverges
            batch = soil.train_batch(step, batch_size)
            targets = loss_targets(batch, cond.objective.loss_on)
            n_loss_tokens = int((targets != -100).sum())  # over the global batch
            batch, targets = batch.rows(my_rows).to(device), targets[my_rows].to(device)

            lr = learning_rate(step, cond.optimizer, sched)
            for group in opt.param_groups:
                group["lr"] = lr
            with autocast(device, cond.precision):
                logits = model(batch.inputs)
            loss_sum = F.cross_entropy(logits.to(loss_dtype(cond)).flatten(0, 1), targets.flatten(), reduction="sum")
            (loss_sum / n_loss_tokens).backward()
            # one all-reduce carries the gradients, the loss, "somebody was asked to stop"
            # and "a listener asked for a checkpoint at this step" (known to the main process only)
            wants_stop = torch.tensor([float(stop[0])], device=device)
            wants_ckpt = torch.tensor([float(step + 1 in watching.extra_checkpoints)], device=device)
            reduced = _all_reduce_grads(params, dist, [loss_sum.detach().view(1), wants_stop, wants_ckpt])
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cond.optimizer.grad_clip or math.inf, foreach=True)
            # both are all-reduced, so every rank sees the same values and stops at the same step
            loss_value = reduced[0].item() / n_loss_tokens
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm.item())):
                torch.set_rng_state(rng_before)
                has_checkpoint = dist.share(dist.main and any(r.step == step for r in run.checkpoints()))
                if not has_checkpoint:  # the weights before the bad step; the optimizer has not taken it
                    _save(run if dist.main else None, model, opt, step, tokens_per_step, dist)
                why = divergence(step + 1, loss_value, grad_norm.item(), cond)
                if dist.main:
                    run.commit()
                    run.log_event(step + 1, "diverged", why)
                raise SeedbedError(f"run '{run_path}' {why}")
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            stop_now = reduced[1].item() > 0
            watching.train_s += time.perf_counter() - t0
            steps_since += 1

            if dist.main:
                run.log_metrics(step, {"train/loss": loss_value})
            evaluating_now = step % sched.eval_every == 0 or step == total
            checkpointing = cond.checkpoints.due(step, total)
            if dist.main and (evaluating_now or watching.due(step, checkpointing, sched.eval_every)):
                t1 = time.perf_counter()
                metrics: dict[str, float] = {}
                if evaluating_now:
                    tps = tokens_per_step * steps_since / max(watching.train_s - train_time_then, 1e-9)  # training steps only
                    steps_since, train_time_then = 0, watching.train_s
                    metrics = evaluate(model, soil, cond, device, stop)
                    metrics.update({"train/lr": lr, "train/grad_norm": float(grad_norm), "train/tokens_per_s": tps})
                    if bar is not None and "eval/loss" in metrics:
                        bar.update(bar.task_ids[0], tps=f"{tps:,.0f}", eval_loss=f"{metrics['eval/loss']:.3f}")
                observe(step, metrics)
                eval_time += time.perf_counter() - t1
            elif evaluating_now:  # other ranks keep the tokens/s window in step
                steps_since, train_time_then = 0, watching.train_s
            if bar is not None:
                bar.update(bar.task_ids[0], completed=step, loss=f"{loss_value:.3f}")
            if checkpointing or stop_now or reduced[2].item() > 0:
                _save(run if dist.main else None, model, opt, step, tokens_per_step, dist)
            if stop_now and step < total:
                if dist.main:
                    run.log_event(step, "interrupted", f"stopped at step {step}; checkpoint saved")
                    say(f"[yellow]interrupted at step {step:,}: checkpoint saved. Continue with: seedbed grow --resume {run_path}")
                raise Interrupted(step)

    if dist.main:
        spent = f"eval and observers took {eval_time:.1f}s of {watching.train_s + eval_time:.1f}s"
        if watching.observers:
            spent += f"; observers {watching.observe_s:.1f}s = {watching.observe_s / max(watching.train_s, 1e-9):.1%} of training time"
        run.log_event(total, "done", f"grew {total:,} steps; {spent}")
        final = run.last_metric("eval/loss")
        held_out = "" if final is None else f", eval loss {final:.4f}"
        say(f"[green]grew {run.name}[/]: {total:,} steps, train loss {loss_value:.4f}{held_out} → {run_path}")
    return run


def finite(values: dict[str, float]) -> dict[str, float]:
    """Only the finite values: SQLite stores NaN as NULL, which every reader of the run would trip on."""
    return {k: v for k, v in values.items() if math.isfinite(v)}


def divergence(step: int, loss: float, grad_norm: float, cond: Conditions) -> str:
    """What went wrong at `step` and what to change: a too-high learning rate is by far the likeliest cause."""
    bad, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", grad_norm)
    fixes = ["lower optimizer.lr"]
    if cond.schedule.warmup_steps == 0:
        fixes.append("add schedule.warmup_steps")
    if not cond.optimizer.grad_clip:
        fixes.append("set optimizer.grad_clip")
    advice = ", ".join(fixes[:-1]) + " or " + fixes[-1] if len(fixes) > 1 else fixes[0]
    return (
        f"diverged at step {step}: the {bad} became {'NaN' if math.isnan(value) else 'infinite'} "
        f"(optimizer.lr={cond.optimizer.lr:g} is likely too high): {advice}; the weights up to step {step - 1} are saved"
    )


def _all_reduce_grads(params: list[Tensor], dist: Distributed, extras: list[Tensor]) -> Tensor:
    """Sum gradients (and a few scalars) over ranks in one call; returns the summed scalars."""
    extra = torch.cat(extras)
    if dist.world == 1:
        return extra
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads] + [extra])
    torch_dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[offset:]


def _rng_states(dist: Distributed, device: torch.device) -> list[Tensor]:
    """Every rank's CPU RNG state (index = rank); dropout is the only consumer."""
    mine = torch.get_rng_state()
    if dist.world == 1:
        return [mine]
    mine = mine.to(device)  # NCCL gathers GPU tensors only
    out: list[Tensor] = [torch.empty_like(mine) for _ in range(dist.world)]
    torch_dist.all_gather(out, mine)
    return [t.cpu() for t in out]


def _state(opt: torch.optim.Optimizer, step: int, dist: Distributed, device: torch.device) -> dict:
    """What resuming needs besides the weights. Collective: every rank takes part."""
    return {
        "step": step,
        "cursor": step,  # one global batch per step
        # (the learning-rate schedule is a pure function of the step: the step is its whole state)
        "optimizer": opt.state_dict(),
        "rng": _rng_states(dist, device),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _save(run: Run | None, model: nn.Module, opt: torch.optim.Optimizer, step: int, tokens_per_step: int, dist: Distributed) -> None:
    state = _state(opt, step, dist, next(model.parameters()).device)
    if run is not None:
        checkpoint.save(run, model, step, step * tokens_per_step, state)


def _restore(run, run_path, model, opt, dist, total, say) -> int | None:
    """Load the newest checkpoint that verifies; returns its step, or None if the run is complete."""
    if dist.main:
        run.remove_partial_writes()  # the remains of a write that a crash cut short
        loaded = checkpoint.newest_valid(run, say=lambda m: say(f"[yellow]{m}"))
        step = loaded.record.step if loaded else -1
    step = dist.share(step if dist.main else None)
    if not dist.main and step >= 0:
        reader = Run.open(run_path, readonly=True)
        loaded = checkpoint.load(reader, next(r for r in reader.checkpoints() if r.step == step))
        reader.close()
    if step < 0:
        raise SeedbedError(f"run '{run_path}' has no checkpoint that verifies: grow it again from its conditions.toml under a new --name")
    checkpoint.load_into(model, loaded.weights)
    state = loaded.state
    opt.load_state_dict(state["optimizer"])
    rngs = state["rng"]
    torch.set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if step >= total:
        say(f"run '{run_path}' is already complete at step {step:,}: nothing to do")
        return None
    if dist.main:
        run.forget_after(step)
        run.log_event(step, "resume", f"resumed from step {step}")
        say(f"resuming {run.name} from step {step:,}")
    return step
