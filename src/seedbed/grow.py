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
import re
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import NoReturn

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from seedbed import checkpoint, snapshot
from seedbed import conditions as conditions_module
from seedbed.conditions import Conditions, Optimizer, Schedule, Train, package_versions
from seedbed.contained import remove_tree
from seedbed.distributed import Distributed, all_reduce_grads, backend_for, pick_device
from seedbed.errors import SeedbedError
from seedbed.lineage import Parent, find_parent
from seedbed.model import Transformer
from seedbed.run import Run
from seedbed.soil import Batch, SoilBase, make_soil, resolve
from seedbed.tracking import Mirror, Sink, sinks_for

Observer = Callable[[nn.Module, int], dict[str, float]]
# Told what was observed at a step, once it is stored in the run; returns steps to keep
# a checkpoint of: recent past ones (from snapshots kept in memory) or future ones.
Listener = Callable[[Run, int, dict[str, float]], Iterable[int]]

RECENT_SNAPSHOTS = 8  # observed steps whose checkpoint stays in memory, for a listener to keep
SNAPSHOT_BUDGET = 256 * 2**20  # bytes of memory those snapshots may take


class Interrupted(Exception):
    """Growth stopped by Ctrl-C / SIGTERM after saving a checkpoint."""


# ── the pieces ───────────────────────────────────────────────────────────────
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
    """AdamW over the parameters that train, with weight decay on matrices only: decaying gains and biases only hurts."""
    matrices, vectors = decay_groups([p for p in model.parameters() if p.requires_grad])
    groups = [{"params": matrices, "weight_decay": o.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    # The fused kernel is one pass over all parameters (CPU and CUDA); it is deterministic.
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=True)


def decay_groups(params: list[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Matrices (decayed) and the rest (not), in the order the optimizer numbers its parameters."""
    return [p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]


# ── which parameters train ([train] only / freeze) ──────────────────────────
def _matches(pattern: str, name: str) -> bool:
    """`pattern` names the parameter `name` or a module it lies under ("blocks.*.attn" → blocks.0.attn.qkv.weight)."""
    parts = name.split(".")
    return any(fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def choose_trained(model: nn.Module, train: Train) -> list[nn.Parameter]:
    """The parameters `train` lets train, in the model's order. A pattern matching nothing is a one-line error.

    A tied parameter has two names (embed.weight, unembed.weight): either selects it."""
    named = list(model.named_parameters(remove_duplicate=False))

    def selected(patterns: list[str], key: str) -> set[int]:
        ids: set[int] = set()
        for pattern in patterns:
            hit = {id(p) for n, p in named if _matches(pattern, n)}
            if not hit:
                raise SeedbedError(f"train.{key}: {pattern!r} matches no parameter of this model: its names are "
                                   f"{parameter_names(model)} (N: a layer number; * matches anything)")
            ids |= hit
        return ids

    keep = selected(train.only, "only") if train.only is not None else {id(p) for _, p in named}
    keep -= selected(train.freeze, "freeze")
    trained = [p for p in model.parameters() if id(p) in keep]
    if not trained:
        raise SeedbedError("[train] leaves no parameter to train: widen train.only or narrow train.freeze")
    return trained


def parameter_names(model: nn.Module) -> str:
    """The model's module paths for an error message, layers folded: "embed, blocks.N.attn, …, unembed"."""
    paths = [re.sub(r"\.\d+(?=\.|$)", ".N", n.rsplit(".", 1)[0]) for n, _ in model.named_parameters(remove_duplicate=False)]
    return ", ".join(dict.fromkeys(paths))


def train_only(model: nn.Module, train: Train) -> list[nn.Parameter]:
    """Freeze what `train` leaves out (requires_grad False: autograd never goes through it, the optimizer never
    holds it, so it stays bit-identical); returns the parameters that train, in the model's order."""
    trained = choose_trained(model, train)
    ids = {id(p) for p in trained}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return trained


def adopt_optimizer(opt: torch.optim.Optimizer, model: nn.Module, parent: Parent) -> None:
    """Continue the parent's Adam moments for every parameter both train, matched by name (the parent may
    have trained others); the child's own hyperparameters (lr, betas, weight decay) stay its own."""
    names = {id(p): n for n, p in model.named_parameters()}

    def numbered(params: list[nn.Parameter]) -> list[str]:
        matrices, vectors = decay_groups(params)
        return [names[id(p)] for p in matrices + vectors]

    theirs = {n: i for i, n in enumerate(numbered(choose_trained(model, parent.train)))}
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    where = f'[init] keep_optimizer: the optimizer state of "{parent.path}" at step {parent.step}'
    try:
        saved, state = parent.optimizer["state"], {}
        for i, name in enumerate(numbered([p for p in model.parameters() if p.requires_grad])):
            moments = saved.get(theirs.get(name, -1))
            if moments is not None:
                if any(tuple(moments[k].shape) != shapes[name] for k in ("exp_avg", "exp_avg_sq")):
                    raise ValueError(f"{name} has moments of another shape")
                state[i] = moments
        full = opt.state_dict()
        full["state"] = state
        opt.load_state_dict(full)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise SeedbedError(f"{where} does not fit this model ({err}): leave keep_optimizer out to start it fresh") from None


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

    def handler(signum, frame):
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
    sinks: Sequence[Sink] = (),
    progress: bool = True,
    console: Console | None = None,
) -> Run:
    """Grow a new run from `conditions`, or continue the run at `resume`. Returns the Run.

    `observers` are called at step 0, at every eval and checkpoint step and every
    `observe_every` steps; what they return is stored in the run, and their cost is
    logged as `time/observe_s` against `time/train_s`. `listeners` then hear every
    observation and may ask for checkpoints around what they saw. `sinks` (and the
    conditions' `[tracking]`) get a one-way copy of the run: TensorBoard, MLflow (seedbed.tracking).

    Raises `Interrupted` after saving a checkpoint if stopped by a signal.
    """
    console = console or Console()
    if (conditions is None) == (resume is None):
        raise SeedbedError("give a conditions file (seedbed grow examples/induction.toml) or --resume runs/NAME, not both")
    parent = None

    if resume is not None:
        run_path = Path(resume)
        cond, soil = _reopen(run_path, console)
    else:
        assert conditions is not None
        cond, soil = resolve(conditions)
        cond = cond.model_copy(update={"versions": package_versions()})
        run_path = Run.check_new(Path(runs_dir), name or cond.name or "run")
        with torch.device("meta"):  # names only, nothing allocated: a pattern matching nothing is refused before any folder
            choose_trained(Transformer(cond.architecture), cond.train)
        if cond.init is not None:
            cond, parent = find_parent(cond)

    mirror = Mirror([*sinks_for(cond.tracking), *sinks], say=lambda line: console.print(line, soft_wrap=True, highlight=False))
    dist = Distributed.from_env(backend_for(cond.device))
    try:
        if observe_every is not None and observe_every < 1:
            raise SeedbedError(f"observe_every={observe_every}: observe every 1 or more steps")
        g = Growing(cond, soil, run_path, resume is not None, dist, pick_device(cond.device, dist),
                    Watching(observers, observe_every, listeners), progress, console, parent=parent, mirror=mirror)
        run = _start(g, Path(runs_dir))
    except BaseException:
        dist.close(together=False)  # a barrier could wait forever for a rank that failed elsewhere
        raise
    dist.close(together=True)
    return run


def _reopen(run_path: Path, console: Console) -> tuple[Conditions, SoilBase]:
    """The saved conditions and soil of a run to resume, refused if it diverged or its soil changed since."""
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
    return cond, soil


@dataclass
class Growing:
    """One growth's context, fixed before the first step: what grows, where it is written, which
    rank this process is, who watches. Every piece of the loop below takes it."""

    cond: Conditions  # resolved (d_vocab from the soil, full batch size, package versions)
    soil: SoilBase
    run_path: Path
    resuming: bool
    dist: Distributed
    device: torch.device
    watching: Watching
    progress: bool
    console: Console
    run: Run | None = None  # the open run folder, on rank 0 only: the other ranks never write
    parent: Parent | None = None  # a new child run's verified starting checkpoint ([init] from)
    mirror: Mirror = field(default_factory=Mirror)  # copies of the run for other trackers (rank 0 only)

    def __post_init__(self) -> None:
        self.my_rows = self.dist.rows(self.cond.schedule.batch_size)  # this rank's rows of every global batch

    @property
    def tokens_per_step(self) -> int:
        return self.cond.schedule.batch_size * self.soil.seq_len

    def say(self, message: str) -> None:
        """A line for the person growing the run: printed by rank 0 only."""
        if self.dist.main:
            self.console.print(message, soft_wrap=True, highlight=False)


def _start(g: Growing, runs_dir: Path) -> Run:
    """Make (or open) the run folder and lock it, then grow; a new run that fails before its first
    checkpoint is removed, so that a failed start never takes the name."""
    if g.dist.world > 1 and g.cond.schedule.batch_size < g.dist.world:
        raise SeedbedError(f"schedule.batch_size={g.cond.schedule.batch_size} is smaller than {g.dist.world} processes: raise it")
    if not g.resuming:
        g.dist.barrier()  # every rank has checked the name before rank 0 creates the folder
    if g.dist.main:
        g.run = Run.open(g.run_path) if g.resuming else Run.create(runs_dir, g.run_path.name, g.cond, g.soil.artifacts())
    try:
        if g.run is not None:
            g.run.hold_lock()
        try:
            return _grow(g)
        finally:
            g.mirror.close()  # the last rows (done, interrupted, diverged) follow first
            if g.run is not None:
                g.run.release_lock()
    except BaseException:
        if g.run is not None:
            if not g.resuming:
                discard_if_unstarted(g.run)
            g.run.close()  # what was not committed (metrics after the last checkpoint) is rolled back: a resume regrows it
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


@dataclass
class Learner:
    """The model being grown, its optimizer, and the parameters that train."""

    model: Transformer
    opt: torch.optim.AdamW
    params: list[nn.Parameter]


@dataclass
class Taken:
    """What one step measured. Loss and flags are all-reduced, so every rank sees the same and stops at the same step."""

    loss: float
    grad_norm: float
    lr: float
    stop: bool  # somebody was asked to stop (Ctrl-C, SIGTERM)
    checkpoint: bool  # a listener asked for a checkpoint at this step


@dataclass
class Clock:
    """Where growth's time goes: tokens/s over the training steps since the last eval, and the seconds
    spent in evals and observers (training seconds are `Watching.train_s`, carried across resumes)."""

    train_then: float  # Watching.train_s when the current tokens/s window began
    steps_since: int = 0
    eval_s: float = 0.0

    def window(self, train_s: float, tokens_per_step: int) -> float:
        """Tokens/s over the window's training steps alone; a new window begins."""
        tps = tokens_per_step * self.steps_since / max(train_s - self.train_then, 1e-9)
        self.steps_since, self.train_then = 0, train_s
        return tps


def _grow(g: Growing) -> Run:
    """Seedling → first checkpoint (or the resumed one) → steps until the end or a stop → the closing line."""
    learner = _seedling(g)
    start = _resume(g, learner) if g.resuming else _first_checkpoint(g, learner)
    if g.run is not None:
        g.mirror.open(g.run.path)  # rewritten from run.sqlite as it is now: a resume leaves no step twice in it
    if start is None:
        return g.run
    total = g.cond.schedule.steps
    clock = Clock(g.watching.train_s)
    bar = make_progress(g.console, total, start) if g.progress and g.dist.main else None
    with catch_stop_signals() as stop, (bar or nullcontext()):
        for step in range(start + 1, total + 1):  # `step`: the weights' step once this step is taken
            t0 = time.perf_counter()
            taken = _train_step(g, learner, step - 1, stop)
            g.watching.train_s += time.perf_counter() - t0
            clock.steps_since += 1
            _after_step(g, learner, step, taken, clock, bar, stop)
    _finish(g, clock, taken.loss)
    return g.run


def _seedling(g: Growing) -> Learner:
    """The model from the seed alone (or, for a new child, its parent's weights), the parameters that train,
    and their optimizer (fresh, or continuing the parent's with keep_optimizer)."""
    model = Transformer(g.cond.architecture, seed=g.cond.seed).to(g.device)
    if g.parent is not None:
        checkpoint.load_into(model, g.parent.weights)
    params = train_only(model, g.cond.train)
    opt = make_optimizer(model, g.cond.optimizer)
    if g.parent is not None and g.parent.optimizer is not None:
        adopt_optimizer(opt, model, g.parent)
    torch.manual_seed(g.cond.seed + g.dist.rank)  # only dropout draws from the global RNG
    return Learner(model, opt, params)


def _first_checkpoint(g: Growing, learner: Learner) -> int:
    """A new run: step 0 saved (and observed) before anything moves. Returns the step to start from."""
    if g.run is not None:
        g.run.log_event(0, "start", _start_line(g, learner))
        for note in g.parent.skipped if g.parent is not None else []:
            g.run.log_event(0, "parent-checkpoint-skipped", note)
            g.say(f"[yellow]note: {note}: starting from step {g.parent.step}")
    _save(g, learner, 0)
    if g.run is not None and g.watching.observers:
        _observe(g, learner, 0, {})
    return 0


def _start_line(g: Growing, learner: Learner) -> str:
    """The start event: what grows, from what, and how much of it trains."""
    n_params, trained = learner.model.n_params(), sum(p.numel() for p in learner.params)
    origin = f" from {g.parent.path}@{g.parent.step}" if g.parent is not None else ""
    sizes = f"{n_params:,} parameters" if trained == n_params else f"{trained:,} of {n_params:,} parameters training"
    return f"growing {g.run.name}{origin}: {sizes}, {g.cond.schedule.steps:,} steps"


def _resume(g: Growing, learner: Learner) -> int | None:
    """A resumed run: its newest verified checkpoint and the time spent so far. None if it is complete."""
    start = snapshot.restore(g.run, g.run_path, learner.model, learner.opt, g.dist, g.cond.schedule.steps, g.say)
    if start is not None and g.run is not None:
        g.watching.observe_s = g.run.last_metric("time/observe_s") or 0.0
        g.watching.train_s = g.run.last_metric("time/train_s") or 0.0
    return start


def _train_step(g: Growing, learner: Learner, step: int, stop: list[bool]) -> Taken:
    """Forward, loss, backward, all-reduce, clip, optimizer step: batch `step` takes the weights to step + 1."""
    cond, batch_size = g.cond, g.cond.schedule.batch_size
    rng_before = torch.get_rng_state()  # dropout's draws, undone if this step diverges
    batch = g.soil.train_batch(step, batch_size)
    targets = loss_targets(batch, cond.objective.loss_on)
    n_loss_tokens = int((targets != -100).sum())  # over the global batch
    batch, targets = batch.rows(g.my_rows).to(g.device), targets[g.my_rows].to(g.device)

    lr = learning_rate(step, cond.optimizer, cond.schedule)
    for group in learner.opt.param_groups:
        group["lr"] = lr
    with autocast(g.device, cond.precision):
        logits = learner.model(batch.inputs)
    loss_sum = F.cross_entropy(logits.to(loss_dtype(cond)).flatten(0, 1), targets.flatten(), reduction="sum")
    (loss_sum / n_loss_tokens).backward()
    # one all-reduce carries the gradients, the loss, "somebody was asked to stop"
    # and "a listener asked for a checkpoint at this step" (known to the main process only)
    wants_stop = torch.tensor([float(stop[0])], device=g.device)
    wants_ckpt = torch.tensor([float(step + 1 in g.watching.extra_checkpoints)], device=g.device)
    reduced = all_reduce_grads(learner.params, g.dist, [loss_sum.detach().view(1), wants_stop, wants_ckpt])
    grad_norm = torch.nn.utils.clip_grad_norm_(learner.params, cond.optimizer.grad_clip or math.inf, foreach=True).item()
    loss = reduced[0].item() / n_loss_tokens
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        torch.set_rng_state(rng_before)
        _diverged(g, learner, step, loss, grad_norm)
    learner.opt.step()
    learner.opt.zero_grad(set_to_none=True)
    return Taken(loss, grad_norm, lr, reduced[1].item() > 0, reduced[2].item() > 0)


def _diverged(g: Growing, learner: Learner, step: int, loss: float, grad_norm: float) -> NoReturn:
    """Keep the weights before the bad step (the optimizer has not taken it), say why, and stop."""
    has_checkpoint = g.dist.share(g.run is not None and any(r.step == step for r in g.run.checkpoints()))
    if not has_checkpoint:
        _save(g, learner, step)
    why = divergence(step + 1, loss, grad_norm, g.cond)
    if g.run is not None:
        g.run.commit()
        g.run.log_event(step + 1, "diverged", why)
    raise SeedbedError(f"run '{g.run_path}' {why}")


def _after_step(g: Growing, learner: Learner, step: int, taken: Taken, clock: Clock, bar: Progress | None, stop: list[bool]) -> None:
    """Log, evaluate and observe when due, checkpoint when due or asked, stop when asked."""
    sched, total = g.cond.schedule, g.cond.schedule.steps
    if g.run is not None:
        g.run.log_metrics(step, {"train/loss": taken.loss})
    evaluating_now = step % sched.eval_every == 0 or step == total
    checkpointing = g.cond.checkpoints.due(step, total)
    if g.run is not None and (evaluating_now or g.watching.due(step, checkpointing, sched.eval_every)):
        t1 = time.perf_counter()
        metrics: dict[str, float] = {}
        if evaluating_now:
            metrics = _evaluate(g, learner, taken, clock, bar, stop)
        _observe(g, learner, step, metrics)
        clock.eval_s += time.perf_counter() - t1
    elif evaluating_now:  # other ranks keep the tokens/s window in step
        clock.window(g.watching.train_s, g.tokens_per_step)
    if bar is not None:
        bar.update(bar.task_ids[0], completed=step, loss=f"{taken.loss:.3f}")
    if checkpointing or taken.stop or taken.checkpoint:
        _save(g, learner, step)
    if taken.stop and step < total:
        if g.run is not None:
            g.run.log_event(step, "interrupted", f"stopped at step {step}; checkpoint saved")
        g.say(f"[yellow]interrupted at step {step:,}: checkpoint saved. Continue with: seedbed grow --resume {g.run_path}")
        raise Interrupted(step)


def _evaluate(g: Growing, learner: Learner, taken: Taken, clock: Clock, bar: Progress | None, stop: list[bool]) -> dict[str, float]:
    """Held-out metrics, with the step's learning rate, gradient norm and the tokens/s since the last eval."""
    tps = clock.window(g.watching.train_s, g.tokens_per_step)  # training steps only
    metrics = evaluate(learner.model, g.soil, g.cond, g.device, stop)
    metrics.update({"train/lr": taken.lr, "train/grad_norm": taken.grad_norm, "train/tokens_per_s": tps})
    if bar is not None and "eval/loss" in metrics:
        bar.update(bar.task_ids[0], tps=f"{tps:,.0f}", eval_loss=f"{metrics['eval/loss']:.3f}")
    return metrics


def _observe(g: Growing, learner: Learner, step: int, metrics: dict[str, float]) -> None:
    """Observe (main process only), store everything measured at `step`, tell the listeners."""
    assert g.run is not None
    observed = finite(g.watching.observe(learner.model, step))
    metrics.update(observed)
    if g.watching.observers:
        metrics.update({"time/observe_s": g.watching.observe_s, "time/train_s": g.watching.train_s})
    g.run.log_metrics(step, finite(metrics))
    g.run.commit()
    g.mirror.sync()
    g.watching.hear(g.run, step, observed, _in_memory(g, learner, step))


def _in_memory(g: Growing, learner: Learner, step: int) -> Callable[[], checkpoint.Encoded] | None:
    """The checkpoint of `step`, encoded when a listener wants it kept in memory. Only in a single
    process: a past checkpoint would need every rank's RNG state, gathered at that step."""
    if g.dist.world > 1:
        return None
    return lambda: checkpoint.encode(learner.model, step, step * g.tokens_per_step, snapshot.state(learner.opt, step, g.dist, g.device))


def _save(g: Growing, learner: Learner, step: int) -> None:
    """Checkpoint `step` (collective: every rank calls it; rank 0 writes)."""
    snapshot.save(g.run, learner.model, learner.opt, step, g.tokens_per_step, g.dist)


def _finish(g: Growing, clock: Clock, loss: float) -> None:
    """The closing event and line: where the time went, the last losses."""
    if g.run is None:
        return
    w, total = g.watching, g.cond.schedule.steps
    spent = f"eval and observers took {clock.eval_s:.1f}s of {w.train_s + clock.eval_s:.1f}s"
    if w.observers:
        spent += f"; observers {w.observe_s:.1f}s = {w.observe_s / max(w.train_s, 1e-9):.1%} of training time"
    g.run.log_event(total, "done", f"grew {total:,} steps; {spent}")
    final = g.run.last_metric("eval/loss")
    held_out = "" if final is None else f", eval loss {final:.4f}"
    g.say(f"[green]grew {g.run.name}[/]: {total:,} steps, train loss {loss:.4f}{held_out} → {g.run_path}")


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
