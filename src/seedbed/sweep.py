"""Many runs: one executor for sweeps and for trials over seeds — a local process pool, or a Ray cluster.

The executor (`Executor`) grows a list of `Job`s, each a module-level function and its plain arguments:
- locally (the default): a pool of spawned processes, one per usable core, each with its share of the
  cores' threads; Ctrl-C reaches every worker, whose growth saves a checkpoint and stops;
- on Ray (`--ray auto|ADDRESS`, the optional extra `seedbed[ray]`): one Ray task per run, one thread
  each, retried (`RETRIES`) when its worker or node dies. A retried run finds its folder on the shared
  filesystem and resumes from its newest checkpoint (`grow --resume`), so its weights come out bit
  for bit as if nothing had happened.

`seedbed sweep CONDITIONS --seeds A-B [--set KEY=V1,V2 …]` (`run_sweep`): plan the grid (every
combination of the --set values, for every seed), check all of it before anything is written, write
the plan (`sweep.json`), grow the runs (a finished run is skipped, a started one resumes, a diverged one
is kept as it is), then gather one table — the settings varied, the final losses, the observers' last
values, the emergence onsets — as `table.csv` (and `table.parquet` when pyarrow is importable), beside
a summary `report.html`.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import statistics
import tomllib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from seedbed import conditions as conditions_module
from seedbed.conditions import Conditions
from seedbed.errors import SeedbedError
from seedbed.files import write_atomic
from seedbed.threads import available_cores, use_threads

Say = Callable[[str], None]
RAY_INSTALL = "pip install 'seedbed[ray]'"
RETRIES = 3  # times Ray runs a task again after its worker process or node died (not after an error in the run)
CONNECT_TIMEOUT_S = 5.0  # an unreachable Ray address is an error after this long, not a minute of retries
STOPPING = ".stopping"  # in the folder being grown while Ctrl-C stops the local workers
PLAN, TABLE_CSV, TABLE_PARQUET, REPORT = "sweep.json", "table.csv", "table.parquet", "report.html"
MAX_RUNS = 100_000  # a grid bigger than this is a typo in --seeds or --set, not a plan
AGAIN = "run the same seedbed sweep command again: finished runs are kept, the others resume"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ── the executor ─────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Job:
    """One run to grow: `grow(*args)` in a worker. `grow` is a module-level function (sent by reference),
    `args` plain values (paths as absolute strings: a Ray worker may start in another folder)."""

    label: str
    grow: Callable[..., None]
    args: tuple


class Executor:
    """Where runs grow: this machine's processes (`Executor()`), or a Ray cluster's tasks (`Executor.connect(ADDR)`)."""

    def __init__(self, ray: Any = None, address: str | None = None) -> None:
        self.ray, self.address = ray, address

    @classmethod
    def connect(cls, address: str | None) -> Executor:
        """The local pool for None; else a connection to the Ray cluster at `address`, made now, so that a missing
        Ray or an unreachable cluster is one line before anything is written."""
        return cls() if address is None else cls(connect_ray(address), address)

    def grow(self, jobs: list[Job], top: Path, say: Say, workers: int | None = None, again: str = AGAIN) -> None:
        """Grow every job; the first error is the caller's. `again`: what to run to continue after Ctrl-C."""
        if not jobs:
            return
        if self.ray is not None:
            _on_ray(self.ray, jobs, say, again)
        else:
            workers = max(1, min(len(jobs), workers or available_cores()))
            _in_pool(jobs, workers, Path(top), say, again)

    def close(self) -> None:
        if self.ray is not None:
            self.ray.shutdown()
            self.ray = None


class _Terminated(Exception):
    """SIGTERM reached the process that owns the pool (and not, as Ctrl-C does, its workers)."""


def _in_pool(jobs: list[Job], workers: int, top: Path, say: Say, again: str) -> None:
    """Every job in `workers` spawned processes, each with its share of the usable cores.

    Stopping: Ctrl-C reaches every worker (one process group), whose growth saves a checkpoint and
    stops; SIGTERM to this process is passed on to the workers, which do the same. Jobs not yet
    started are dropped (TOP/.stopping tells a worker not to start one). A worker's error is ours.
    """
    from seedbed.grow import Interrupted

    say(f"growing {len(jobs)} runs in {workers} processes: {', '.join(j.label for j in jobs)}")
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    running = {pool.submit(_in_worker, j.grow, j.args, workers, str(top)): j.label for j in jobs}

    def terminated(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        for job in as_completed(running):
            job.result()
            say(f"grew {running[job]}")
    except (KeyboardInterrupt, Interrupted, _Terminated) as stop:
        (top / STOPPING).touch()  # a run already handed to a worker must not start after all
        if isinstance(stop, _Terminated):
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()  # SIGTERM: the worker's growth saves a checkpoint and stops
        pool.shutdown(wait=True, cancel_futures=True)
        (top / STOPPING).unlink(missing_ok=True)
        say(f"[yellow]interrupted: the runs under {top} saved checkpoints; to continue, {again}")
        raise Interrupted() from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    pool.shutdown()


def _in_worker(grow: Callable[..., None], args: tuple, workers: int, top: str) -> None:
    """One job in a pool process, with its share of the cores (at most OMP_NUM_THREADS), unless the pool is stopping."""
    from seedbed.grow import Interrupted

    global _stopped
    if _stopped or (Path(top) / STOPPING).exists():
        return
    use_threads(workers)
    try:
        grow(*args)
    except (Interrupted, KeyboardInterrupt):
        # the next job may already be queued to this worker before the owner writes TOP/.stopping
        _stopped = True
        raise


_stopped = False  # in a worker process: Ctrl-C stopped a run here, so start no other


# ── Ray ──────────────────────────────────────────────────────────────────────
def import_ray() -> Any:
    """Ray, imported only when asked for: it is an optional extra."""
    try:
        import ray
    except ImportError:
        raise SeedbedError(f"--ray needs Ray, which is not installed: {RAY_INSTALL} (or leave --ray out to grow here)") from None
    return ray


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """HOST, PORT of a Ray address (`HOST:PORT` or `ray://HOST:PORT`); None for `auto`."""
    if address == "auto":
        return None
    m = re.fullmatch(r"(?:ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(\d{1,5})", address.strip())
    if m is None or not 0 < int(m[2]) < 65536:
        raise SeedbedError(f"--ray {address!r}: give auto, HOST:PORT of the cluster's head (port 6379 unless it was "
                           "started with another), or ray://HOST:10001")
    return m[1].strip("[]"), int(m[2])


def _auto_endpoint(ray: Any) -> tuple[str, int] | None:
    """Where `auto` points (RAY_ADDRESS, or the newest cluster started on this machine); None if nowhere."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
    except Exception:  # noqa: BLE001 — a private helper: without it, ray.init says itself
        return None
    return ray_endpoint(found) if found else None


def reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def connect_ray(address: str) -> Any:
    """ray, connected to the cluster at `address`; one line if Ray is missing or the cluster cannot be reached."""
    import logging

    endpoint = ray_endpoint(address)
    ray = import_ray()
    endpoint = endpoint or _auto_endpoint(ray)
    if endpoint is not None and not reachable(*endpoint):
        raise SeedbedError(f"--ray {address}: no Ray cluster answers at {endpoint[0]}:{endpoint[1]} within {CONNECT_TIMEOUT_S:g}s: "
                           "start one (ray start --head) or check the address and the firewall")
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SeedbedError(f"--ray {address}: cannot connect ({first}): start a cluster with ray start --head, or check the address") from None
    return ray


def _on_ray(ray: Any, jobs: list[Job], say: Say, again: str) -> None:
    """Every job as a Ray task (one CPU, one thread), retried when its worker dies; the first error is ours."""
    from seedbed.grow import Interrupted

    task = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)(_ray_task)
    cwd = os.getcwd()
    refs = {task.remote(j.grow, j.args, cwd): j.label for j in jobs}
    say(f"growing {len(jobs)} runs as Ray tasks on {_cpus(ray)} CPUs: {', '.join(refs.values())}")
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                _result(ray, ref, refs[ref])
                say(f"grew {refs[ref]}")
    except (KeyboardInterrupt, Interrupted):
        for ref in pending:
            ray.cancel(ref)  # a cancelled run keeps its checkpoints
        say(f"[yellow]interrupted: the runs keep their checkpoints; to continue, {again}")
        raise Interrupted() from None
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise


def _cpus(ray: Any) -> str:
    return f"{ray.cluster_resources().get('CPU', 0):g}"


def _result(ray: Any, ref: Any, label: str) -> None:
    """A task's outcome: its SeedbedError as ours (one line), a worker dead too often as one line."""
    from ray import exceptions

    try:
        ray.get(ref)
    except exceptions.RayTaskError as err:
        cause = err.cause
        if isinstance(cause, SeedbedError):
            raise SeedbedError(str(cause.args[0] if cause.args else cause)) from None
        raise cause from None
    except exceptions.RayError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SeedbedError(f"{label}: Ray gave up on it after {RETRIES} retries ({type(err).__name__}: {first}); "
                           f"its checkpoints are kept: {AGAIN}") from None


def _ray_task(grow: Callable[..., None], args: tuple, cwd: str) -> None:
    """One job as a Ray task: one thread (Ray gave it one CPU), in the submitter's folder when this node has it."""
    import torch

    torch.set_num_threads(1)
    if os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths in conditions (a text corpus) mean what they meant to the submitter
    grow(*args)


# ── one run: new, resumed, or already there ──────────────────────────────────
def grow_or_resume(cond: Conditions, folder: Path, name: str, say: Say, **growing: Any) -> None:
    """Grow FOLDER/NAME from COND; resume it if an earlier attempt left checkpoints (a Ray retry, a sweep run again);
    nothing if it is finished or diverged. `growing`: grow()'s observers, observe_every, listeners, progress, console."""
    from seedbed.grow import grow
    from seedbed.run import Run

    path = Path(folder) / name
    if not os.path.lexists(path):
        grow(cond, runs_dir=folder, name=name, **growing)
        return
    run = Run.open(path, readonly=True)
    try:
        started, done, diverged = bool(run.checkpoints()), run.steps_done(), run.diverged_at()
        saved = run.conditions
    finally:
        run.close()
    if not started:  # died before its first checkpoint: start again (grow replaces the empty folder)
        grow(cond, runs_dir=folder, name=name, **growing)
        return
    differs = differences(cond, saved)
    if differs:
        raise SeedbedError(f"run '{path}' was grown from other conditions ({differs}): move it away, or choose another folder")
    if diverged is not None or done >= saved.schedule.steps:
        say(f"already grown: {path} ({'diverged' if diverged is not None else f'{done:,} steps'})")
        return
    grow(resume=path, **growing)  # it says from which step


def differences(asked: Conditions, saved: Conditions) -> str:
    """The settings `asked` gives that `saved` (resolved when its run started) does not agree with; "" if none."""
    left = flat(asked.model_dump(mode="json", exclude_none=True, exclude={"versions", "init"}))
    right = flat(saved.model_dump(mode="json", exclude_none=True, exclude={"versions", "init"}))
    return ", ".join(f"{k} = {right.get(k)!r} there, {v!r} here" for k, v in left.items() if right.get(k) != v)[:300]


def flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _grow_sweep_run(cond: dict, folder: str, name: str) -> None:
    """One run of a sweep, in a worker: the default observers and the live watcher; a divergence is a result, kept."""
    from seedbed.model import Transformer
    from seedbed.run import Run
    from seedbed.soil import resolve
    from seedbed.watch import Watcher, default_observers

    conditions = conditions_module.parse(cond)
    console = Console()
    say = lambda m: console.print(f"[dim]{name}:[/] {m}", soft_wrap=True, highlight=False)
    resolved, soil = resolve(conditions)
    observers = default_observers(Transformer(resolved.architecture), soil)
    try:
        grow_or_resume(conditions, Path(folder), name, say, observers=observers, listeners=[Watcher(say)], progress=False,
                       console=console)
    except SeedbedError:
        path = Path(folder) / name
        if (path / "run.sqlite").is_file():
            run = Run.open(path, readonly=True)
            try:
                if run.diverged_at() is not None:
                    return  # grow said so; the table shows it
            finally:
                run.close()
        raise


# ── the plan ─────────────────────────────────────────────────────────────────
def parse_seeds(text: str) -> list[int]:
    """`A-B` (inclusive) or one seed `A`."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if m is None:
        raise SeedbedError(f"--seeds {text!r}: write a range of seeds A-B, e.g. 0-99 (or one seed, e.g. 7)")
    first, last = int(m[1]), int(m[2] if m[2] is not None else m[1])
    if first > last:
        raise SeedbedError(f"--seeds {text}: the first seed is after the last: write {last}-{first}")
    if last - first + 1 > MAX_RUNS:
        raise SeedbedError(f"--seeds {text}: {last - first + 1:,} seeds is more than a sweep grows ({MAX_RUNS:,}): split it")
    return list(range(first, last + 1))


def parse_values(rhs: str, item: str) -> list[Any]:
    """`2000,4000` → [2000, 4000]: each value as TOML reads it (a bare word is text; `[0.9, 0.99]` a list)."""
    try:
        return list(tomllib.loads(f"v = [{rhs}]")["v"])
    except tomllib.TOMLDecodeError:
        pass
    values = []
    for word in rhs.split(","):
        word = word.strip()
        try:
            values.append(tomllib.loads(f"v = {word}")["v"])
        except tomllib.TOMLDecodeError:
            if not re.fullmatch(r"[A-Za-z0-9_.+/-]+", word):
                raise SeedbedError(f"--set {item!r}: {word!r} is not a value: write numbers, true/false, words or \"quoted text\", "
                                   "separated by commas") from None
            values.append(word)
    return values


def parse_set(item: str, base: Conditions) -> tuple[str, list[Any]]:
    """`KEY=V1,V2,…` → (KEY, values), KEY checked against the conditions' own keys."""
    key, eq, rhs = item.partition("=")
    key = key.strip()
    if not eq or not key or not rhs.strip():
        raise SeedbedError(f"--set {item!r}: write KEY=VALUE[,VALUE…], e.g. --set optimizer.lr=1e-3,3e-3")
    if key == "seed":
        raise SeedbedError("--set seed: the seeds come from --seeds (e.g. --seeds 0-9)")
    check_key(key, base)
    values = parse_values(rhs, item)
    if not values:
        raise SeedbedError(f"--set {item!r}: give at least one value after '='")
    if len({json.dumps(v, sort_keys=True) for v in values}) < len(values):
        raise SeedbedError(f"--set {item!r}: a value is repeated: give each once")
    return key, values


def check_key(key: str, base: Conditions) -> None:
    """KEY names a setting of these conditions (a field of its tables, by its TOML name)."""
    node: Any = base
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the conditions"
        if not isinstance(node, BaseModel):
            raise SeedbedError(f"--set {key}: {where} is a single value, with no keys inside: set {where} itself")
        fields = {(f.alias or n): n for n, f in type(node).model_fields.items()}
        if part not in fields:
            known = ", ".join(sorted(fields))
            raise SeedbedError(f"--set {key}: {where} has no key '{part}' (its keys: {known}): check the spelling (docs/conditions.md)")
        node = getattr(node, fields[part])
        if node is None and i < len(parts) - 1:
            raise SeedbedError(f"--set {key}: {'.'.join(parts[: i + 1])} is not in the conditions file: add its table there first")
        if isinstance(node, dict) and i < len(parts) - 1:
            raise SeedbedError(f"--set {key}: {'.'.join(parts[: i + 1])} is filled in by seedbed, not set")


def put(data: dict, key: str, value: Any) -> dict:
    """A copy of `data` with the dotted KEY set to VALUE."""
    out = json.loads(json.dumps(data))
    node = out
    *path, last = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    return out


@dataclass(frozen=True)
class Planned:
    """One run of the grid: its folder's name, seed, the --set values it takes, and its conditions."""

    name: str
    seed: int
    settings: dict[str, Any]
    conditions: Conditions


def plan_runs(data: dict[str, Any], source: str, seeds: list[int], axes: list[tuple[str, list[Any]]]) -> list[Planned]:
    """Every combination of the axes' values set in the conditions as written (DATA: what is derived, such as
    d_head, follows), for every seed; each validated as conditions (strict types, sizes)."""
    combos = list(itertools.product(*[values for _, values in axes]))
    if len(combos) * len(seeds) > MAX_RUNS:
        raise SeedbedError(f"the grid has {len(combos) * len(seeds):,} runs, more than a sweep grows ({MAX_RUNS:,}): split it")
    keys = [k for k, _ in axes]
    planned = []
    for combo in combos:
        settings = dict(zip(keys, combo))
        shown = " ".join(f"{k}={_toml(v)}" for k, v in settings.items())
        over = data
        for k, v in settings.items():
            over = put(over, k, v)
        cond = conditions_module.parse(over, f"{source} with --set {shown}" if shown else source)
        for seed in seeds:
            name = run_name(keys, combo, seed)
            planned.append(Planned(name, seed, settings, cond.model_copy(update={"seed": seed, "name": name})))
    if len({p.name for p in planned}) < len(planned):  # values that read alike once made into names: number them
        planned = [Planned(f"run{i // len(seeds):04d}_seed{p.seed}", p.seed, p.settings, p.conditions.model_copy(
            update={"name": f"run{i // len(seeds):04d}_seed{p.seed}"})) for i, p in enumerate(planned)]
    return planned


def run_name(keys: list[str], combo: tuple, seed: int) -> str:
    """`steps2000_lr0.003_seed7`: each key by its last part (its whole name where two share one)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    short = [s if last.count(s) == 1 else k for s, k in zip(last, keys)]
    parts = [f"{s}{re.sub(r'[^A-Za-z0-9._-]+', '-', _toml(v)).strip('-')}" for s, v in zip(short, combo)]
    return "_".join([*parts, f"seed{seed}"])


def _toml(v: Any) -> str:
    """A value as it is written in --set (and TOML)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "[" + ",".join(_toml(x) for x in v) + "]"
    return repr(v)


def plan_record(conditions_file: Path, data: dict[str, Any], seeds: list[int], axes: list[tuple[str, list[Any]]],
                planned: list[Planned]) -> dict[str, Any]:
    return {
        "conditions_file": str(conditions_file),
        "conditions": data,
        "seeds": [seeds[0], seeds[-1]],
        "set": {k: v for k, v in axes},
        "runs": [{"name": p.name, "seed": p.seed, "settings": p.settings} for p in planned],
    }


def same_plan(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("conditions", "seeds", "set", "runs"))


def check_out(out: Path, plan: dict[str, Any]) -> bool:
    """OUT is new, empty, or holds this very sweep (True: continue it); anything else is one line."""
    from seedbed import contained

    if not os.path.lexists(out):
        return False
    if not out.is_dir() or out.is_symlink():
        raise SeedbedError(f"--out '{out}' exists and is not a folder: choose another --out")
    if not any(out.iterdir()):
        return False
    try:
        there = json.loads(contained.open_regular(out / PLAN, contained.JSON_MAX_BYTES))
    except (contained.Unsafe, OSError, ValueError, UnicodeDecodeError, SeedbedError):
        raise SeedbedError(f"'{out}' already holds something other than a sweep: choose another --out") from None
    if not isinstance(there, dict) or not same_plan(there, plan):
        raise SeedbedError(f"'{out}' holds another sweep (other conditions, seeds or --set): choose another --out")
    return True


# ── the sweep ────────────────────────────────────────────────────────────────
def run_sweep(conditions_file: Path, seeds: str, sets: list[str], out: Path | None = None, ray: str | None = None,
              runs_dir: Path = Path("runs"), console: Console | None = None) -> Path:
    """Plan, check (nothing written before), grow, gather: returns the sweep's folder."""
    console = console or Console()
    say: Say = lambda m: console.print(m, soft_wrap=True, highlight=False)
    base = conditions_module.load(conditions_file)
    data = tomllib.loads(conditions_file.read_bytes().decode("utf-8"))  # as written: --set goes in before derived values
    seed_list = parse_seeds(seeds)
    axes = [parse_set(item, base) for item in sets]
    repeated = sorted({k for k, _ in axes if [a for a, _ in axes].count(k) > 1})
    if repeated:
        raise SeedbedError(f"--set {repeated[0]} is given twice: give its values once, separated by commas")
    planned = plan_runs(data, str(conditions_file), seed_list, axes)
    out = Path(out) if out is not None else Path(runs_dir) / f"sweep-{conditions_file.stem}-seeds{seed_list[0]}-{seed_list[-1]}"
    plan = plan_record(conditions_file, data, seed_list, axes, planned)
    again = check_out(out, plan)
    executor = Executor.connect(ray)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not again:
            write_atomic(out / PLAN, json.dumps({**plan, "written": now()}, indent=1).encode())
        top = out.resolve()
        grid = " × ".join(f"{k} ({len(v)})" for k, v in axes) or "one setting"
        say(f"[bold]sweep[/] {conditions_file}: {grid} × {len(seed_list)} seeds = {len(planned)} runs → {out}"
            + (" (continuing)" if again else ""))
        todo = [p for p in planned if not finished(top / p.name)]
        if len(todo) < len(planned):
            say(f"{len(planned) - len(todo)} runs already finished: kept")
        jobs = [Job(p.name, _grow_sweep_run, (p.conditions.model_dump(mode="json"), str(top), p.name)) for p in todo]
        executor.grow(jobs, top, say)
    finally:
        executor.close()
    rows = gather(out, plan)
    write_tables(out, rows)
    write_atomic(out / REPORT, sweep_page(plan, rows).encode("utf-8"))
    saved = f"{out / TABLE_CSV}" + (f", {out / TABLE_PARQUET}" if (out / TABLE_PARQUET).exists() else "")
    say(f"[green]sweep done[/]: {len(rows)} runs; table → {saved}; report → {out / REPORT}")
    return out


def finished(path: Path) -> bool:
    """A run folder whose growth is over: done, or diverged (growing it again would diverge again)."""
    from seedbed.run import Run

    if not (path / "run.sqlite").is_file():
        return False
    try:
        run = Run.open(path, readonly=True)
    except SeedbedError:
        return False
    try:
        return run.status() in ("done", "diverged")
    finally:
        run.close()


# ── the table and the page ───────────────────────────────────────────────────
def gather(out: Path, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run: its settings, status, final losses, observers' last values and emergence onsets."""
    from seedbed.run import Run
    from seedbed.watch.emergence import transition
    from seedbed.watch.live import DEFAULT_SERIES

    rows = []
    for planned in plan["runs"]:
        row: dict[str, Any] = {"run": planned["name"], "seed": planned["seed"],
                               **{k: _cell(v) for k, v in planned["settings"].items()}}
        run = Run.open(out / planned["name"], readonly=True)
        try:
            names = run.metric_names()
            row.update({"status": run.status(), "steps": run.steps_done(), "diverged_at": run.diverged_at()})
            row["train/loss"] = run.last_metric("train/loss")
            row.update({n: run.last_metric(n) for n in names if n.startswith("eval/")})
            watched = {n: run.last_metric(n) for n in names if n.startswith("watch/")}
            for pattern in DEFAULT_SERIES:
                series = _strongest(pattern, watched)
                found = None
                if series is not None:
                    history = run.metric(series)
                    found = transition(series, [s for s, _ in history], [v for _, v in history])
                row[f"onset/{pattern.removeprefix('watch/').removesuffix('/*')}"] = None if found is None else found.start
            row.update(watched)
        finally:
            run.close()
        rows.append(row)
    return rows


def _strongest(pattern: str, last: dict[str, float | None]) -> str | None:
    """The series a watched pattern means: itself, or under `prefix/*` the one highest at the end."""
    if not pattern.endswith("/*"):
        return pattern if pattern in last else None
    under = {k: v for k, v in last.items() if k.startswith(pattern[:-1]) and v is not None}
    return max(under, key=under.__getitem__) if under else None


def _cell(v: Any) -> Any:
    """A setting as a table cell: numbers, words and booleans as they are, a list as it is written."""
    return _toml(v) if isinstance(v, list) else v


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def write_tables(out: Path, rows: list[dict[str, Any]]) -> None:
    """OUT/table.csv, and OUT/table.parquet when pyarrow is importable."""
    cols = columns_of(rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if r.get(k) is None else r[k]) for k in cols} for r in rows])
    write_atomic(out / TABLE_CSV, text.getvalue().encode("utf-8"))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        (out / TABLE_PARQUET).unlink(missing_ok=True)  # an old table would misrepresent this one
        return
    arrays = {c: _column(pa, [r.get(c) for r in rows]) for c in cols}
    buf = io.BytesIO()
    pq.write_table(pa.table(arrays), buf)
    write_atomic(out / TABLE_PARQUET, buf.getvalue())


def _column(pa: Any, values: list[Any]) -> Any:
    """One typed column: whole numbers, numbers, booleans, or text (a mixed column as text)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def sweep_page(plan: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The summary report: the grid, one line per setting (over its seeds), and every run."""
    from seedbed.report import CSS, esc, num_cell, table

    keys = list(plan["set"])
    onsets = [c for c in columns_of(rows) if c.startswith("onset/")]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(json.dumps(r.get(k)) for k in keys), []).append(r)
    grid_rows = [[f"<code>{esc(k)}</code>", esc(", ".join(_toml(v) for v in vs))] for k, vs in plan["set"].items()]
    setting_rows = []
    for group in groups.values():
        losses = [r["eval/loss"] for r in group if isinstance(r.get("eval/loss"), float) and math.isfinite(r["eval/loss"])]
        spread = f" ± {statistics.stdev(losses):.3g}" if len(losses) > 1 else ""
        cells = [num_cell(group[0].get(k)) for k in keys]
        cells += [str(len(group)), str(sum(r["status"] == "done" for r in group)),
                  esc(f"{statistics.mean(losses):.4g}{spread}") if losses else "–"]
        for c in onsets:
            steps = [r[c] for r in group if r.get(c) is not None]
            cells.append(esc(f"{len(steps)} of {len(group)}" + (f", median step {statistics.median(steps):,.0f}" if steps else "")))
        setting_rows.append(cells)
    shown = ["run", "seed", *keys, "status", "steps", "train/loss", "eval/loss", *onsets]
    run_rows = [[esc(r["run"]) if c == "run" else num_cell(r.get(c)) for c in shown] for r in rows]
    n = len(rows)
    numeric = set(range(1, len(shown)))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>sweep of {esc(plan['conditions_file'])}: {n} runs · seedbed</title><style>{CSS}</style></head><body><main>"
        f'<header><p class="kicker">seedbed sweep</p><h1>{esc(Path(plan["conditions_file"]).name)}</h1>'
        f'<p class="meta">{n} runs · seeds {plan["seeds"][0]}–{plan["seeds"][1]} · gathered {esc(now())}</p></header>'
        '<section id="grid"><h2>Grid</h2>'
        + (table(["key", "values"], grid_rows) if grid_rows else '<p class="note">No --set: the conditions as written, over seeds.</p>')
        + f'<p class="note">Conditions: <code>{esc(plan["conditions_file"])}</code>; the whole table: '
        f'<a href="{TABLE_CSV}">{TABLE_CSV}</a> (and {TABLE_PARQUET} when pyarrow is installed).</p></section>'
        '<section id="settings"><h2>Per setting, over seeds</h2>'
        + table([*keys, "runs", "done", "held-out loss (mean ± sd)", *[f"emerged: {c[6:]}" for c in onsets]], setting_rows,
                set(range(len(keys) + 3)))
        + '<p class="note">Emergence: an abrupt transition in the watched series (seedbed.watch.emergence); its step is where it began.</p>'
        '</section><section id="runs"><h2>Every run</h2>'
        + table(shown, run_rows, numeric)
        + "</section><footer>written by <code>seedbed sweep</code></footer></main></body></html>\n"
    )
