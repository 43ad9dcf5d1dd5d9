"""What a trial is, and how one runs: claim, conditions, prediction, growth, measurement, verdict, report.

A trial file declares a `Trial` subclass: the `claim` in one sentence, its `source`,
`conditions(scale, seed)` (one or more named runs; "main" first), the `predictions`
(thresholds written in the file, so they are fixed before any run), `measure(path)`
and `judge(evidence)`. `run_trial` does the rest in a fixed order: it writes the
prediction to disk *before* growing, grows every run with the built-in observers and
the live watcher, measures, judges, and writes `trial.json` and `report.html`.

The verdict comes from the checks alone: every prediction held → "held"; any did
not → "did not hold"; otherwise (something could not be measured) "inconclusive".
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console
from rich.markup import escape

from seedbed.conditions import Conditions, package_versions
from seedbed.errors import SeedbedError
from seedbed.files import write_atomic
from seedbed.run import Run
from seedbed.threads import threads_for

SCALES = ("tiny", "small", "full")
STOPPING = ".stopping"  # in a trial's folder while Ctrl-C stops its worker processes
HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"


@dataclass(frozen=True)
class Prediction:
    """One prediction, as written before the run: what should happen and the threshold it must pass."""

    id: str
    text: str
    threshold: str


@dataclass
class Check:
    """A prediction against the evidence: what was measured and whether it held (None: could not tell)."""

    id: str
    measured: str
    held: bool | None


@dataclass
class Evidence:
    """Everything a trial measured: the numbers the verdict is computed from, and the figures."""

    numbers: dict[str, Any] = field(default_factory=dict)
    figures: list[dict] = field(default_factory=list)
    emergences: list[dict] = field(default_factory=list)


def verdict(checks: list[Check]) -> str:
    if any(c.held is False for c in checks):
        return NOT_HELD
    if checks and all(c.held for c in checks):
        return HELD
    return INCONCLUSIVE


class Trial:
    name: ClassVar[str]
    claim: ClassVar[str]
    source: ClassVar[str]
    predictions: ClassVar[list[Prediction]]
    observe_every: ClassVar[dict[str, int]] = {"tiny": 10, "small": 25, "full": 100}
    watch_series: ClassVar[dict[str, tuple[str, float]] | None] = None  # what the live watcher announces (None: its defaults)

    def conditions(self, scale: str, seed: int) -> dict[str, Conditions]:
        """The runs to grow, by name; "main" is the run the trial folder is."""
        raise NotImplementedError

    def workers(self) -> int:
        """Processes that grow the runs other than main; 1 grows them one after another in this process."""
        return 1

    def observers(self, model: Any, soil: Any) -> list:
        """What to watch while each run grows; the built-in observers unless a trial needs its own."""
        from seedbed.watch import default_observers

        return default_observers(model, soil)

    def measure(self, path: Path) -> Evidence:
        raise NotImplementedError

    def judge(self, evidence: Evidence) -> list[Check]:
        raise NotImplementedError


REGISTRY: dict[str, type[Trial]] = {}


def register(cls: type[Trial]) -> type[Trial]:
    REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> Trial:
    import seedbed.trials

    if name not in REGISTRY:
        raise SeedbedError(f"no trial named '{name}': the trials are {', '.join(sorted(REGISTRY))} (seedbed trials lists them)")
    return REGISTRY[name]()


# ── running one ─────────────────────────────────────────────────────────────
def default_out(runs_dir: Path, name: str, scale: str, seed: int) -> Path:
    """runs/NAME-SCALE-seedS, or -2, -3… when that exists: a trial never overwrites an earlier one."""
    base = runs_dir / f"{name}-{scale}-seed{seed}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def run_trial(name: str, scale: str = "small", seed: int = 0, out: Path | None = None, runs_dir: Path = Path("runs"), console: Console | None = None, progress: bool = True,
              n_seeds: int | None = None) -> Path:
    """Grow, watch, measure and judge one trial; returns its folder (which holds report.html).

    `n_seeds` is for trials that grow several seeds (the `seeds` trial); others refuse it.
    """
    from seedbed.report import write_report

    console = console or Console()
    trial = get(name)
    if scale not in SCALES:
        raise SeedbedError(f"scale '{scale}' is not one of {', '.join(SCALES)}")
    if seed < 0:
        raise SeedbedError(f"seed={seed}: use a seed of 0 or more")
    if n_seeds is not None:
        if not hasattr(trial, "n_seeds"):
            raise SeedbedError(f"--seeds applies to the seeds trial only, not '{name}': leave it out")
        if n_seeds < 2:
            raise SeedbedError(f"--seeds {n_seeds}: comparing seeds needs at least 2")
        trial.n_seeds = n_seeds
    out = Path(out) if out is not None else default_out(Path(runs_dir), name, scale, seed)
    if out.exists():
        raise SeedbedError(f"'{out}' already exists: choose another --out, or leave --out out to get a fresh name")
    runs = trial.conditions(scale, seed)
    say = lambda m: console.print(m, soft_wrap=True, highlight=False)

    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "trial": name,
        "claim": trial.claim,
        "source": trial.source,
        "scale": scale,
        "seed": seed,
        "prediction_written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {**package_versions(), "python": platform.python_version()},
        "conditions": {k: c.model_dump(mode="json", exclude_none=True) for k, c in runs.items()},
        "runs": {k: "." if k == "main" else k for k in runs},
        "predictions": [{**asdict(p), "measured": None, "held": None} for p in trial.predictions],
        "verdict": None,
    }
    say(f"[bold]trial {name}[/] ({scale}, seed {seed}): {trial.claim}")
    for p in trial.predictions:
        say(f"  predicted ({p.id}) {p.text} " + escape(f"[{p.threshold}]"))

    # main first (its folder is the trial's folder); then the others, in parallel processes if the trial asks
    say(f"growing main: {out}")
    grow_one(trial, scale, runs["main"], out.parent, out.name, say, progress, console)
    write_atomic(out / "trial.json", json.dumps(result, indent=1).encode())  # the prediction, before anything is measured
    others = [(k, c) for k, c in runs.items() if k != "main"]
    workers = min(trial.workers(), len(others))
    if workers > 1:
        _grow_in_parallel(name, scale, others, out, workers, say)
    else:
        for k, c in others:
            say(f"growing {k}: {out / k}")
            grow_one(trial, scale, c, out, k, say, progress, console)

    say("measuring…")
    evidence = trial.measure(out)
    checks = trial.judge(evidence)
    by_id = {c.id: c for c in checks}
    for p in result["predictions"]:
        c = by_id.get(p["id"])
        p.update(measured=c.measured if c else "not measured", held=c.held if c else None)
    result.update(
        verdict=verdict([by_id.get(p.id, Check(p.id, "not measured", None)) for p in trial.predictions]),
        why=_why(result["predictions"]),
        evidence=evidence.numbers,
        figures=evidence.figures,
        emergences=evidence.emergences,
        observer_cost=observer_cost([out if k == "main" else out / k for k in runs]),
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        wall_seconds=round(time.perf_counter() - t0, 1),
    )
    write_atomic(out / "trial.json", json.dumps(result, indent=1).encode())
    report = write_report(out)
    colour = {HELD: "green", NOT_HELD: "red"}.get(result["verdict"], "yellow")
    for p in result["predictions"]:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]–[/]"}[p["held"]]
        say(f"  {mark} ({p['id']}) {escape(p['measured'])}")
    say(f"[bold {colour}]verdict: {result['verdict']}[/] in {result['wall_seconds']:.0f}s → {report}")
    return out


def grow_one(trial: Trial, scale: str, cond: Conditions, runs_dir: Path, name: str, say, progress: bool, console: Console | None) -> None:
    """Grow one of a trial's runs with the trial's observers and the live watcher."""
    from seedbed.grow import grow
    from seedbed.model import Transformer
    from seedbed.soil import resolve
    from seedbed.watch import Watcher

    resolved, soil = resolve(cond)
    observers = trial.observers(Transformer(resolved.architecture), soil)
    grow(cond, runs_dir=runs_dir, name=name, observers=observers, observe_every=trial.observe_every[scale],
         listeners=[Watcher(say, trial.watch_series)], progress=progress, console=console)


class _Terminated(Exception):
    """SIGTERM reached the trial's process (and not, as Ctrl-C does, its workers)."""


def _grow_in_parallel(name: str, scale: str, runs: list[tuple[str, Conditions]], out: Path, workers: int, say) -> None:
    """Grow `runs` inside the trial's folder, `workers` processes at a time, each with its share of the cores.

    Stopping: Ctrl-C reaches every worker (one process group), whose growth saves a
    checkpoint and stops; SIGTERM to the trial is passed on to the workers, which do the same.
    Runs not yet started are dropped. A worker's error is the trial's error.
    """
    from seedbed.grow import Interrupted

    say(f"growing {len(runs)} runs in {workers} processes: {', '.join(k for k, _ in runs)}")
    threads = threads_for(workers)  # the usable cores (affinity, cgroup quota), shared evenly
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    jobs = {pool.submit(_grow_in_process, name, scale, c.model_dump(mode="json"), str(out), k, threads): k for k, c in runs}

    def terminated(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        for job in as_completed(jobs):
            job.result()
            say(f"grew {jobs[job]}")
    except (KeyboardInterrupt, Interrupted, _Terminated) as why:
        (out / STOPPING).touch()  # a run already handed to a worker must not start after all
        if isinstance(why, _Terminated):
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()  # SIGTERM: the worker's growth saves a checkpoint and stops
        pool.shutdown(wait=True, cancel_futures=True)
        (out / STOPPING).unlink(missing_ok=True)
        say(f"[yellow]interrupted: the runs under {out} saved checkpoints; continue one with: seedbed grow --resume {out}/RUN")
        raise Interrupted() from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    pool.shutdown()


def _grow_in_process(trial_name: str, scale: str, cond: dict, runs_dir: str, name: str, threads: int) -> None:
    """One run in a worker process: its own threads, no progress bar, lines prefixed with the run's name."""
    import torch

    from seedbed.conditions import parse

    if (Path(runs_dir) / STOPPING).exists():
        return
    torch.set_num_threads(threads)
    console = Console()
    say = lambda m: console.print(f"[dim]{name}:[/] {m}", soft_wrap=True, highlight=False)
    grow_one(get(trial_name), scale, parse(cond), Path(runs_dir), name, say, False, console)


def _why(predictions: list[dict]) -> str:
    failed = [p["id"] for p in predictions if p["held"] is False]
    unknown = [p["id"] for p in predictions if p["held"] is None]
    if failed:
        return f"prediction{'s' if len(failed) > 1 else ''} {', '.join(failed)} did not hold: " + "; ".join(p["measured"] for p in predictions if p["held"] is False)
    if unknown:
        return f"prediction{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} could not be measured"
    return "every prediction held, each against the threshold written before the run"


def observer_cost(paths: list[Path]) -> dict[str, float]:
    """Seconds spent in observers against seconds of training, summed over the trial's runs."""
    observe = train = 0.0
    for p in paths:
        run = Run.open(p, readonly=True)
        observe += run.last_metric("time/observe_s") or 0.0
        train += run.last_metric("time/train_s") or 0.0
        run.close()
    return {"observer_seconds": round(observe, 2), "train_seconds": round(train, 2), "share": round(observe / train, 4) if train else None}


def last_verdicts(runs_dir: Path) -> dict[str, dict]:
    """The newest finished trial.json of each trial under `runs_dir`."""
    found: dict[str, dict] = {}
    for f in sorted(Path(runs_dir).glob("*/trial.json")):
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if r.get("verdict") and r.get("finished", "") >= found.get(r.get("trial"), {}).get("finished", ""):
            found[r["trial"]] = {**r, "path": str(f.parent)}
    return found

