"""The local learning coefficient (LLC): how many effective parameters the loss around a checkpoint has.

Watanabe's learning coefficient λ measures the volume of near-optimal weights around a minimum: a
regular model with d parameters has λ = d/2, a degenerate one less. Lau et al. 2023 ("Quantifying
degeneracy in singular models via the learning coefficient") estimate it at a checkpoint w* by
sampling the tempered posterior localised at w* with SGLD and measuring how far the loss rises:

    λ̂(w*) = nβ · (E_w[L(w)] − L(w*)),   w ~ exp(−nβ L(w) − γ/2 ‖w − w*‖²)

Hoogland et al. 2024 ("The Developmental Landscape of In-Context Learning") follow λ̂ over the
checkpoints of 2-layer attention-only transformers and find its plateaus and jumps at the stages in
which induction heads form. Here:

- the SGLD step is devinterp's (`SGMCMC.sgld`: step size ε, localisation γ, inverse temperature nβ,
  noise from a generator we hand it); the chain loop is ours, so that
- every batch is the soil's deterministic training batch at cursor t (the same batches for every
  chain and every checkpoint: differences between checkpoints are not batch noise), and every
  chain's noise comes from its own generator seeded by (run seed, chain): nothing touches the
  global RNG, so the same seed gives the same bits and watching does not change growth;
- L(w*) is measured on the very batches the draws use, so λ̂ is a mean of paired differences.

`seedbed llc RUN --calibrate` runs devinterp's calibration recipe (a grid of step sizes and
localisations, short chains, diagnostics per cell) and suggests settings.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedbed.conditions import Conditions
from seedbed.errors import SeedbedError
from seedbed.model import evaluating
from seedbed.run import Run
from seedbed.soil import Batch, SoilBase, generator
from seedbed.watch.emergence import Emergence, transition

LLC_STREAM = 7  # the soil's RNG streams are 0-2 (train, eval, split): the chains' noise draws from its own
INSTALL = "pip install 'seedbed[llc]'"
# devinterp's calibration notebook sweeps the step size over decades and the localisation over a few values
CALIBRATION_STEP_SIZES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
CALIBRATION_LOCALIZATIONS = (10.0, 100.0, 1000.0)
MIN_ACCEPTANCE = 0.9  # MALA acceptance below this: SGLD's discretisation visibly distorts the posterior (step too large)
DRIFT = 0.2  # the trace's last quarter differs from the quarter before by more than this share: not yet stationary

LossAt = Callable[[nn.Module, int], Tensor]  # (model, t) -> the scalar loss of batch t: deterministic in t


def sgmcmc():
    """devinterp's SGMCMC optimizer, imported when first needed: devinterp is an optional extra."""
    try:
        from devinterp.optim import SGMCMC
    except ImportError:
        raise SeedbedError(f"the LLC needs the devinterp library: {INSTALL}") from None
    return SGMCMC


@dataclass(frozen=True)
class Sampling:
    """SGLD settings. nβ None: devinterp's default, m / log m for batch size m (`default_nbeta`)."""

    step_size: float = 1e-4  # ε (devinterp's lr); the defaults: `--calibrate` on the induction model (docs/llc.md)
    localization: float = 10.0  # γ: the pull back toward w*
    n_beta: float | None = None
    chains: int = 4
    draws: int = 100  # SGLD steps whose loss is averaged
    burnin: int = 50  # SGLD steps before them, not averaged
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("step_size", "localization", "n_beta"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0 and (v > 0 or name == "localization")):
                flag = name.replace("_", "-")
                raise SeedbedError(f"--{flag} {v}: give a finite number {'≥ 0' if name == 'localization' else '> 0'}")
        for name in ("chains", "draws", "batch_size"):
            if getattr(self, name) < 1:
                raise SeedbedError(f"--{name.replace('_', '-')} {getattr(self, name)}: give 1 or more")
        if self.burnin < 0:
            raise SeedbedError(f"--burnin {self.burnin}: give 0 or more")

    @property
    def nbeta(self) -> float:
        m = self.batch_size
        return self.n_beta if self.n_beta is not None else (m / math.log(m) if m > 1 else 1.0)

    def describe(self) -> str:
        return (f"step size {self.step_size:g}, localization {self.localization:g}, nβ {self.nbeta:.4g}, "
                f"{self.chains} chains × ({self.burnin} burn-in + {self.draws} draws), batch {self.batch_size}")

    def as_dict(self) -> dict:
        return {**asdict(self), "n_beta": self.nbeta}


@dataclass
class Estimate:
    """λ̂ at one checkpoint: the mean over chains, their spread, and what the chains went through."""

    mean: float
    std: float  # across chains (0 for one chain)
    per_chain: list[float]
    init_loss: float  # L(w*) on the draws' batches
    trace: Tensor  # [chain, draw] nβ · (L_t(w_t) − L_t(w*)): the running picture the calibration looks at
    acceptance: list[float] = field(default_factory=list)  # per chain: mean MALA acceptance (diagnose only)
    distance: list[float] = field(default_factory=list)  # per chain: ‖w − w*‖ at the last draw
    seconds: float = 0.0

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in self.per_chain)


# ── the estimator ────────────────────────────────────────────────────────────
def estimate(model: nn.Module, loss_at: LossAt, sampling: Sampling, seed: int, diagnose: bool = False) -> Estimate:
    """λ̂ of `model` at its current weights. The model itself is never changed (the chains run on copies).

    `diagnose` also measures each chain's MALA acceptance rate (devinterp 0.x had it as a callback,
    `MalaAcceptanceRate`; here both ends of each move are evaluated on the same batch) and how far the
    chain wandered from w*.
    """
    t0 = time.perf_counter()
    drawn = range(sampling.burnin, sampling.burnin + sampling.draws)
    with torch.no_grad(), evaluating(model):
        at_init = torch.stack([loss_at(model, t).double() for t in drawn])  # L_t(w*)
    traces, acceptance, distance = [], [], []
    for chain in range(sampling.chains):
        noise = generator(seed, LLC_STREAM, chain)
        losses, acc, dist = _chain(model, loss_at, sampling, noise, diagnose)
        traces.append(sampling.nbeta * (losses - at_init))
        acceptance += [acc] if diagnose else []
        distance += [dist] if diagnose else []
    trace = torch.stack(traces)  # [chain, draw]
    per_chain = [float(v) for v in trace.mean(dim=1)]
    mean = float(torch.tensor(per_chain, dtype=torch.float64).mean())
    std = float(torch.tensor(per_chain, dtype=torch.float64).std()) if len(per_chain) > 1 else 0.0
    return Estimate(mean, std, per_chain, float(at_init.mean()), trace, acceptance, distance, time.perf_counter() - t0)


def _copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode (no dropout: the LLC is of the loss, not of its noise), every parameter trainable."""
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(True)
        p.grad = None
    return twin


def _chain(model: nn.Module, loss_at: LossAt, s: Sampling, noise: torch.Generator, diagnose: bool) -> tuple[Tensor, float, float]:
    """One SGLD chain from w*: the loss at each draw (NaN from the step it diverged), MALA acceptance, distance.

    `diagnose` costs a second forward and backward per step: the energy and gradient at the proposal."""
    walker = _copy(model)
    params = list(walker.parameters())
    start = [p.detach().clone() for p in params]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # devinterp warns about nβ = 1, which a caller may mean
        opt = sgmcmc().sgld(params, lr=s.step_size, localization=s.localization, nbeta=s.nbeta)
    losses = torch.full((s.draws,), math.nan, dtype=torch.float64)
    accepted: list[float] = []
    for t in range(s.burnin + s.draws):
        loss = loss_at(walker, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        if t >= s.burnin:
            losses[t - s.burnin] = value
        here = _potential(params, start, value, s) if diagnose else None
        opt.step(noise_generator=noise)
        if here is not None:
            accepted.append(_mala_acceptance(here, _potential_at(walker, params, start, loss_at, t, s), s.step_size))
    dist = math.sqrt(sum(float((p.detach() - w0).double().square().sum()) for p, w0 in zip(params, start)))
    return losses, (sum(accepted) / len(accepted) if accepted else math.nan), dist


def _potential(params: list[nn.Parameter], start: list[Tensor], loss: float, s: Sampling) -> tuple[Tensor, float, Tensor]:
    """(w, U(w), ∇U(w)) with U = nβ L + γ/2 ‖w − w*‖², the energy SGLD samples exp(−U) of."""
    w = torch.cat([p.detach().flatten() for p in params]).double()
    w0 = torch.cat([x.flatten() for x in start]).double()
    grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]).double()
    u = s.nbeta * loss + s.localization / 2 * float((w - w0).square().sum())
    return w, u, s.nbeta * grad + s.localization * (w - w0)


def _potential_at(walker: nn.Module, params: list[nn.Parameter], start: list[Tensor], loss_at: LossAt, t: int,
                  s: Sampling) -> tuple[Tensor, float, Tensor]:
    """The energy at the proposal on the same batch t (on another batch, batch noise × nβ swamps the ratio)."""
    for p in params:
        p.grad = None
    loss = loss_at(walker, t)
    loss.backward()
    return _potential(params, start, float(loss.detach()), s)


def _mala_acceptance(a: tuple[Tensor, float, Tensor], b: tuple[Tensor, float, Tensor], eps: float) -> float:
    """Metropolis-adjusted Langevin acceptance of the move a → b (Roberts & Tweedie 1996). Near 1: the
    discretisation barely distorts the posterior; the calibration notebook aims for about 0.9."""
    (wa, ua, ga), (wb, ub, gb) = a, b
    log_q_ab = -float((wb - wa + eps / 2 * ga).square().sum()) / (2 * eps)  # proposal density a → b
    log_q_ba = -float((wa - wb + eps / 2 * gb).square().sum()) / (2 * eps)
    log_ratio = ua - ub + log_q_ba - log_q_ab
    return 1.0 if log_ratio >= 0 else math.exp(log_ratio)


# ── on a soil ────────────────────────────────────────────────────────────────
def soil_loss(soil: SoilBase, cond: Conditions, batch_size: int) -> LossAt:
    """The growth objective's loss (the positions it trains on) on the soil's training batch at cursor t.

    Batches are kept once made: every chain and every checkpoint sees the same ones."""
    from seedbed.grow import loss_dtype, loss_targets  # the objective, in one place

    made: dict[int, tuple[Tensor, Tensor]] = {}
    dtype = loss_dtype(cond)

    def loss_at(model: nn.Module, t: int) -> Tensor:
        if t not in made:
            batch: Batch = soil.train_batch(t, batch_size)
            made[t] = (batch.inputs, loss_targets(batch, cond.objective.loss_on))
        inputs, targets = made[t]
        device = next(model.parameters()).device
        logits = model(inputs.to(device))
        return F.cross_entropy(logits.to(dtype).flatten(0, 1), targets.to(device).flatten())

    return loss_at


class LLCObserver:
    """An observer (see `seedbed.grow.Observer`): `watch/llc/mean` and `watch/llc/std` every `every` steps.

    SGLD costs chains × (burn-in + draws) forward and backward passes per observation — hundreds of
    training steps' worth — so it keeps its own, sparser schedule: growth calls it at every
    observation and it answers only at multiples of `every` (and step 0).
    """

    def __init__(self, soil: SoilBase, cond: Conditions, sampling: Sampling | None = None, every: int = 1) -> None:
        sgmcmc()  # a missing devinterp is said before growth starts, not at the first observation
        if every < 1:
            raise SeedbedError(f"LLC every={every}: observe every 1 or more steps")
        self.sampling, self.every, self.seed = sampling or Sampling(), every, cond.seed
        self.loss_at = soil_loss(soil, cond, self.sampling.batch_size)

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        if step % self.every:
            return {}
        e = estimate(model, self.loss_at, self.sampling, self.seed)
        return {"watch/llc/mean": e.mean, "watch/llc/std": e.std}


# ── calibration (devinterp's sgld_calibration notebook, as a table) ─────────
@dataclass
class Cell:
    """One (step size, localisation) of the calibration grid and what its chains showed."""

    sampling: Sampling
    estimate: Estimate

    @property
    def problems(self) -> list[str]:
        e, out = self.estimate, []
        if not e.finite:
            return ["diverged (the loss became NaN or infinite): smaller step size"]
        if e.mean <= 0:
            out.append("λ̂ ≤ 0: the chains found lower loss than w* (not a local minimum at this step size): "
                       "larger localization or smaller step size")
        acc = [a for a in e.acceptance if math.isfinite(a)]
        if acc and sum(acc) / len(acc) < MIN_ACCEPTANCE:
            out.append(f"MALA acceptance {sum(acc) / len(acc):.2f} < {MIN_ACCEPTANCE}: step size too large")
        if self.drift > DRIFT:
            out.append(f"not stationary (last quarter differs from the one before by {self.drift:.0%}): more burn-in or draws")
        return out

    @property
    def drift(self) -> float:
        """Relative change of the chain-mean trace between its third and last quarter."""
        trace = self.estimate.trace.mean(dim=0)
        q = max(1, trace.numel() // 4)
        third, last = float(trace[-2 * q:-q].mean()) if trace.numel() >= 2 * q else math.nan, float(trace[-q:].mean())
        return abs(last - third) / max(abs(last), 1e-12) if math.isfinite(third) else 0.0


def calibrate(model: nn.Module, loss_at: LossAt, base: Sampling, seed: int,
              step_sizes: Sequence[float] = CALIBRATION_STEP_SIZES,
              localizations: Sequence[float] = CALIBRATION_LOCALIZATIONS,
              say: Callable[[Cell], None] | None = None) -> list[Cell]:
    """Short chains over a grid of step sizes and localisations, each with its diagnostics."""
    cells = []
    for gamma in localizations:
        for eps in step_sizes:
            s = replace(base, step_size=eps, localization=gamma)
            cell = Cell(s, estimate(model, loss_at, s, seed, diagnose=True))
            cells.append(cell)
            if say is not None:
                say(cell)
    return cells


def suggest(cells: Sequence[Cell]) -> Cell | None:
    """The recipe's choice: among healthy cells, the largest step size (fastest mixing), then the weakest
    localisation (the least pulled-in posterior)."""
    healthy = [c for c in cells if not c.problems]
    if not healthy:
        return None
    return max(healthy, key=lambda c: (c.sampling.step_size, -c.sampling.localization))


# ── over a finished run's checkpoints ───────────────────────────────────────
SERIES = ("watch/llc/mean", "watch/llc/std")
REFERENCES = ("watch/answer_loss", "eval/loss")  # the transition the LLC is held against: the first the run has


def measure_run(path: Path, sampling: Sampling, seed: int | None = None, steps: Sequence[int] | None = None,
                say: Callable[[int, Estimate | None], None] | None = None) -> list[tuple[int, float, float]]:
    """λ̂ at every checkpoint of the run at `path` (or the given `steps`) that has none yet, written into its
    run.sqlite as `watch/llc/mean` and `watch/llc/std`; the weights are only read. Returns the whole series.

    The run is locked meanwhile (nobody grows it while its index is written), each value is committed as
    it comes (an interrupted measurement keeps what it did), and the settings are recorded as an `llc`
    event: adding to a series measured with other settings is refused, so one series never mixes two.
    """
    from seedbed.read.load import load

    sgmcmc()
    run = Run.open(path)
    try:
        run.hold_lock()
        have = [c.step for c in run.checkpoints()]
        chosen = sorted(have if steps is None else set(steps))
        missing = [s for s in chosen if s not in have]
        if missing:
            raise SeedbedError(f"run '{path}' has no checkpoint at step {missing[0]}: give one of {', '.join(map(str, have[:12]))}"
                               + (f", … {have[-1]}" if len(have) > 12 else ""))
        seed = run.conditions.seed if seed is None else seed
        recorded = json.dumps({**sampling.as_dict(), "seed": seed}, sort_keys=True)
        earlier = [text for _, kind, text in run.events() if kind == "llc"]
        done = {s for s, _ in run.metric(SERIES[0])}
        if done and earlier and earlier[-1] != recorded:
            raise SeedbedError(f"run '{path}' has an LLC series measured with other settings ({_settings_line(earlier[-1])}): "
                               "measure with the same settings, or copy the run folder and measure the copy")
        if done and not earlier:
            raise SeedbedError(f"run '{path}' has an LLC series from its growth (settings not recorded): "
                               "copy the run folder without it to measure another")
        todo = [s for s in chosen if s not in done]
        if todo and (not earlier or earlier[-1] != recorded):
            run.log_event(todo[0], "llc", recorded)
        loss_at = None
        for step in todo:
            grown = load(path, step)
            if grown.soil is None:
                raise SeedbedError(f"the soil of '{path}' is not on this machine (its text corpus): the LLC needs its batches")
            loss_at = loss_at or soil_loss(grown.soil, grown.conditions, sampling.batch_size)
            e = estimate(grown.model, loss_at, sampling, seed)
            if not e.finite:
                raise SeedbedError(f"the SGLD chains diverged at step {step}: lower --step-size (seedbed llc {path} --calibrate suggests one)")
            run.log_metrics(step, {SERIES[0]: e.mean, SERIES[1]: e.std})
            run.commit()
            if say is not None:
                say(step, e)
        series = [(s, v, sd) for (s, v), (_, sd) in zip(run.metric(SERIES[0]), run.metric(SERIES[1]))]
        if todo:
            _log_windows(run)
        return series
    finally:
        run.close()


def _settings_line(recorded: str) -> str:
    try:
        d = json.loads(recorded)
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items()))
    except (ValueError, AttributeError):
        return "unreadable"


def windows(run: Run) -> list[Emergence]:
    """The LLC series' transition and the reference loss's, as the emergence detector finds them."""
    found = []
    for name in (SERIES[0], next((r for r in REFERENCES if run.metric(r)), None)):
        if name is None:
            continue
        points = [(s, v) for s, v in run.metric(name) if v is not None]
        e = transition(name, [s for s, _ in points], [v for _, v in points])
        if e is not None:
            found.append(e)
    return found


def _log_windows(run: Run) -> None:
    """Log the transitions as JSON `emergence` events (the report draws them), each window once."""
    logged = set()
    for _, kind, text in run.events():
        if kind == "emergence" and text.startswith("{"):
            try:
                d = json.loads(text)
                logged.add((d.get("series"), d.get("start"), d.get("end")))
            except ValueError:
                pass
    for e in windows(run):
        if (e.series, e.start, e.end) not in logged:
            label = "local learning coefficient" if e.series == SERIES[0] else f"{e.series} (the LLC's reference)"
            run.log_event(e.step, "emergence", json.dumps({**e.as_dict(), "label": label}))


# ── the `seedbed llc` command ────────────────────────────────────────────────
def check_run_folder(path: Path) -> None:
    """A run folder, or one line; a trial's folder is pointed to the runs inside it."""
    if (path / "trial.json").is_file() and not (path / "run.sqlite").exists():
        runs = sorted(p.name for p in path.iterdir() if (p / "run.sqlite").is_file())
        raise SeedbedError(f"'{path}' is a trial's folder: give one of its runs, e.g. {path / (runs[0] if runs else 'main')}")
    Run.check_exists(path)


def llc_command(path: Path, sampling: Sampling, step: int | None, every: int | None, seed: int | None, console) -> None:
    """Measure the series (or one step, or every `every` steps), print it with its transition and the reference loss's."""
    check_run_folder(Path(path))
    if every is not None and (every < 1 or step is not None):
        raise SeedbedError(f"--every {every}: give 1 or more, and not with --step" if every < 1 else "give --every or --step, not both")
    steps = None if step is None else [step]
    if every is not None:
        run = Run.open(path, readonly=True)
        have = [c.step for c in run.checkpoints()]
        run.close()
        steps = [s for s in have if s % every == 0 or s == have[-1]]
    console.print(f"LLC of {path}: {sampling.describe()}", soft_wrap=True, markup=False)

    def say(s: int, e: Estimate | None) -> None:
        if e is not None:
            console.print(f"  step {s:>7,}  λ̂ {e.mean:9.3f} ± {e.std:.3f}  (L(w*) {e.init_loss:.4f}, {e.seconds:.1f}s)", markup=False)

    series = measure_run(Path(path), sampling, seed, steps, say)
    if not series:
        return
    console.print(f"series: {len(series)} checkpoint{'' if len(series) == 1 else 's'} in {path}/run.sqlite as {SERIES[0]} (± {SERIES[1]})", soft_wrap=True, markup=False)
    run = Run.open(path, readonly=True)
    try:
        found = {e.series: e for e in windows(run)}
    finally:
        run.close()
    llc_window = found.pop(SERIES[0], None)
    none = f"LLC: no abrupt transition in {len(series)} points (the detector needs 8 or more, and a jump 3× steeper than around it)"
    console.print(llc_window.line("LLC") if llc_window else none, soft_wrap=True, markup=False)
    for e in found.values():
        console.print(f"{e.line(e.series)} (reference)", soft_wrap=True, markup=False)
    console.print(f"report: seedbed report {path}", soft_wrap=True, markup=False)


def calibrate_command(path: Path, base: Sampling, step: int | None, seed: int | None, console) -> None:
    """devinterp's calibration recipe on one checkpoint: a table of the grid and a suggestion."""
    from seedbed.read.load import load

    sgmcmc()
    check_run_folder(Path(path))
    grown = load(path, step)
    if grown.soil is None:
        raise SeedbedError(f"the soil of '{path}' is not on this machine (its text corpus): the LLC needs its batches")
    seed = grown.conditions.seed if seed is None else seed
    loss_at = soil_loss(grown.soil, grown.conditions, base.batch_size)
    console.print(f"calibrating the LLC of {path} at step {grown.step:,}: nβ {base.nbeta:.4g}, {base.chains} chains × "
                  f"({base.burnin} + {base.draws}) steps, batch {base.batch_size}", soft_wrap=True, markup=False)
    console.print(f"{'step size':>10} {'localization':>12} {'λ̂':>9} {'± chains':>9} {'MALA acc.':>9} {'drift':>6} {'‖w−w*‖':>8}  verdict",
                  markup=False)

    def say(c: Cell) -> None:
        e = c.estimate
        acc = sum(e.acceptance) / len(e.acceptance) if e.acceptance else math.nan
        dist = max(e.distance) if e.distance else math.nan
        verdict = "; ".join(c.problems) or "healthy"
        console.print(f"{c.sampling.step_size:>10g} {c.sampling.localization:>12g} {e.mean:>9.3g} {e.std:>9.2g} {acc:>9.3f} "
                      f"{c.drift:>6.0%} {dist:>8.3g}  {verdict}", soft_wrap=True, markup=False)

    cells = calibrate(grown.model, loss_at, base, seed, say=say)
    best = suggest(cells)
    if best is None:
        console.print("no setting was healthy: lower the step sizes, or give more --burnin and --draws", markup=False)
        return
    console.print(f"suggested: seedbed llc {path} --step-size {best.sampling.step_size:g} --localization {best.sampling.localization:g}"
                  + ("" if base.n_beta is None else f" --n-beta {base.n_beta:g}")
                  + f"  (λ̂ {best.estimate.mean:.3g} ± {best.estimate.std:.2g} at step {grown.step:,})", soft_wrap=True, markup=False)
