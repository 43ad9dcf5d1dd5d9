"""How a trial runs: pre-register, grow, measure, judge, report — for one seed or for many.

One trial (`run_trial`) in a fixed order:
1. write `prediction.json` in a new trial folder: the claim, the predictions with their
   thresholds, the conditions, the sha256 of the trial's file and the time — before anything grows;
2. grow each run into its own subfolder (`main/` first, in this process; the others after it,
   in parallel processes if the trial asks);
3. measure (every declared run must be there, finished), judge, write `trial.json` and `report.html`.

Many seeds (`run_trial(..., seeds=N)`): one summary folder; every seed's trial folder
(`seed-K/`) is pre-registered first, together with the summary's own `prediction.json`,
which holds the rule for the verdict across seeds (the trial's `holds_on`). Then every run of
every seed grows through `seedbed.sweep.Executor`: a pool of processes, one per usable core, or
with `ray=ADDRESS` one Ray task per run (a task whose worker dies is retried and its run resumes
from its checkpoint); each seed is measured and judged
as above; `summary.json` and a summary `report.html` count, per prediction, the seeds on which
it held (with a Wilson 95% interval) and give the verdict from the pre-registered rate alone.

Stopping: Ctrl-C reaches every worker (one process group), whose growth saves a checkpoint
and stops; SIGTERM to the trial is passed on to its workers, which do the same (exit 130).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from seedbed.conditions import Conditions, package_versions
from seedbed.errors import SeedbedError
from seedbed.files import write_atomic
from seedbed.run import Run
from seedbed.sweep import Executor, Job, grow_or_resume
from seedbed.trials.base import (
    HELD,
    INCONCLUSIVE,
    MAIN,
    NOT_HELD,
    SCALES,
    Check,
    Trial,
    get,
    verdict,
)

PREDICTION, RESULT, SUMMARY = "prediction.json", "trial.json", "summary.json"
Say = Callable[[str], None]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# ── what is asked, checked before anything is written ────────────────────────
def check_request(name: str, scale: str, seed: int, seeds: int | None, options: dict[str, int | None] | None,
                  ray: str | None = None) -> Trial:
    """The trial, or one line saying what is wrong with the request."""
    if ray is not None and seeds is None:
        raise SeedbedError(f"--ray {ray}: Ray grows the runs of many seeds: add --seeds N (or leave --ray out)")
    if seeds is not None and seeds < 1:
        raise SeedbedError(f"--seeds {seeds}: give 1 or more seeds (they run from --seed, default 0)")
    if seed < 0:
        raise SeedbedError(f"--seed {seed}: use a seed of 0 or more")
    trial = get(name, options)
    if scale not in SCALES:
        raise SeedbedError(f"scale '{scale}' is not one of {', '.join(SCALES)}")
    return trial


def free_folder(runs_dir: Path, base: str) -> Path:
    """runs/BASE, or BASE-2, BASE-3… when that exists: a trial never overwrites an earlier one."""
    out, n = Path(runs_dir) / base, 1
    while out.exists() or out.is_symlink():
        n += 1
        out = Path(runs_dir) / f"{base}-{n}"
    return out


def new_folder(out: Path) -> Path:
    """Make `out`, which must not exist yet."""
    if out.exists() or out.is_symlink():
        raise SeedbedError(f"'{out}' already exists: choose another --out, or leave --out out to get a fresh name")
    out.mkdir(parents=True)
    return out


# ── pre-registration ─────────────────────────────────────────────────────────
def source_sha256(trial: Trial) -> tuple[str, str]:
    """(file name, sha256) of the file that declares the trial: its thresholds are in it."""
    path = Path(inspect.getsourcefile(type(trial)) or "")
    return path.name, hashlib.sha256(path.read_bytes()).hexdigest()


def preregister(trial: Trial, scale: str, seed: int, out: Path) -> dict[str, Any]:
    """Write OUT/prediction.json (OUT must be new) before anything grows; return it."""
    runs = trial.conditions(scale, seed)
    file, sha = source_sha256(trial)
    pre = {
        "trial": trial.name,
        "claim": trial.claim,
        "source": trial.source,
        "scale": scale,
        "seed": seed,
        "options": trial.chosen,
        "predictions": [asdict(p) for p in trial.predictions],
        "conditions": {k: c.model_dump(mode="json", exclude_none=True) for k, c in runs.items()},
        "runs": {k: k for k in runs},
        "trial_file": file,
        "trial_file_sha256": sha,
        "versions": {**package_versions(), "python": platform.python_version()},
        "prediction_written": now(),
    }
    write_atomic(new_folder(out) / PREDICTION, json.dumps(pre, indent=1).encode())
    return pre


# ── one trial ───────────────────────────────────────────────────────────────
def run_trial(name: str, scale: str = "small", seed: int = 0, out: Path | None = None, runs_dir: Path = Path("runs"),
              console: Console | None = None, progress: bool = True, options: dict[str, int | None] | None = None,
              seeds: int | None = None, ray: str | None = None) -> Path:
    """Grow, watch, measure and judge a trial (on `seeds` seeds from `seed`, if given, their runs on the Ray
    cluster at `ray` if given); returns its folder."""
    trial = check_request(name, scale, seed, seeds, options, ray)
    if seeds is not None:
        executor = Executor.connect(ray)  # an unreachable cluster is one line before anything is written
        try:
            return run_seeds(trial, scale, seed, seeds, out, Path(runs_dir), console or Console(), executor)
        finally:
            executor.close()
    console = console or Console()
    say: Say = lambda m: console.print(m, soft_wrap=True, highlight=False)
    out = Path(out) if out is not None else free_folder(Path(runs_dir), f"{name}-{scale}-seed{seed}")
    t0 = time.perf_counter()
    announce(trial, f"{scale}, seed {seed}", say)
    pre = preregister(trial, scale, seed, out)
    say(f"predictions written: {out / PREDICTION}")

    runs = trial.conditions(scale, seed)
    if runs:  # a trial of worlds and agents grows no transformer: its measure computes everything
        say(f"growing {MAIN}: {out / MAIN}")
        grow_one(trial, scale, runs[MAIN], out, MAIN, say, progress, console)
    grow_others(trial, scale, out, [(k, c) for k, c in runs.items() if k != MAIN], say, progress, console)
    grow_others(trial, scale, out, list(later_runs(trial, scale, seed, out, pre, say).items()), say, progress, console)
    result = finish(trial, pre, out, say)
    colour = {HELD: "green", NOT_HELD: "red"}.get(result["verdict"], "yellow")
    for p in result["predictions"]:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]–[/]"}[p["held"]]
        say(f"  {mark} ({p['id']}) {escape(p['measured'])}")
    say(f"[bold {colour}]verdict: {result['verdict']}[/] in {time.perf_counter() - t0:.0f}s → {out / 'report.html'}")
    return out


def grow_others(trial: Trial, scale: str, out: Path, runs: list[tuple[str, Conditions]], say: Say, progress: bool,
                console: Console) -> None:
    """Grow runs other than main: in a pool of the trial's workers, or one after another in this process."""
    workers = min(trial.workers(), len(runs))
    if workers > 1:
        grow_in_pool(trial, scale, [(out, k, c) for k, c in runs], workers, out, say)
        return
    for k, c in runs:
        say(f"growing {k}: {out / k}")
        grow_one(trial, scale, c, out, k, say, progress, console)


def later_runs(trial: Trial, scale: str, seed: int, out: Path, pre: dict[str, Any], say: Say) -> dict[str, Conditions]:
    """The runs made from the grown main run (Trial.after_main), added to what `finish` measures and records."""
    later = trial.after_main(scale, seed, out)
    if later:
        clash = sorted(set(later) & set(pre["runs"]))
        if clash:
            raise SeedbedError(f"trial '{trial.name}': after_main names runs it already has ({', '.join(clash)})")
        say(f"made from {MAIN}: {', '.join(later)}")
        pre["runs"].update({k: k for k in later})
        pre["conditions"].update({k: c.model_dump(mode="json", exclude_none=True) for k, c in later.items()})
        pre["after_main"] = sorted(later)
    return later


def announce(trial: Trial, what: str, say: Say) -> None:
    say(f"[bold]trial {trial.name}[/] ({what}): {trial.claim}")
    for p in trial.predictions:
        say(f"  predicted ({p.id}) {p.text} " + escape(f"[{p.threshold}]"))


def finish(trial: Trial, pre: dict[str, Any], out: Path, say: Say) -> dict[str, Any]:
    """Measure and judge the grown runs in OUT; write trial.json and report.html; return the result."""
    from seedbed.report import write_report

    t0 = time.perf_counter()
    check_grown(out, pre["runs"])
    say(f"measuring {out}…")
    evidence = trial.measure(out)
    checks = {c.id: c for c in trial.judge(evidence)}
    predictions = []
    for p in pre["predictions"]:
        c = checks.get(p["id"], Check(p["id"], "not measured", None))
        predictions.append({**p, "measured": c.measured, "held": c.held})
    file, sha = source_sha256(trial)
    result = {
        **pre,
        "prediction_file": PREDICTION,
        "predictions": predictions,
        "verdict": verdict([Check(p["id"], p["measured"], p["held"]) for p in predictions]),
        "why": why(predictions),
        "evidence": evidence.numbers,
        "figures": evidence.figures,
        "emergences": evidence.emergences,
        "observer_cost": observer_cost([out / k for k in pre["runs"]]),
        "trial_file_changed": sha != pre["trial_file_sha256"],  # edited while the trial ran: the thresholds may differ
        "finished": now(),
        "wall_seconds": round(seconds_since(pre["prediction_written"]), 1),
        "measure_seconds": round(time.perf_counter() - t0, 1),
    }
    if result["trial_file_changed"]:
        say(f"[yellow]warning: {file} changed since the predictions were written; trial.json says so")
    write_atomic(out / RESULT, json.dumps(result, indent=1).encode())
    write_report(out)
    return result


def seconds_since(iso: str) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()


def check_grown(out: Path, runs: dict[str, str]) -> None:
    """Every declared run is in the trial's folder and grew to its last step: a missing run is an error, not a gap."""
    for name, where in runs.items():
        path = out / where
        if not (path / "run.sqlite").is_file():
            raise SeedbedError(f"the trial's run '{name}' is missing from {out}: run the trial again")
        run = Run.open(path, readonly=True)
        try:
            done, total = run.steps_done(), run.conditions.schedule.steps
        finally:
            run.close()
        if done < total:
            raise SeedbedError(f"the trial's run '{name}' stopped at step {done:,} of {total:,}: continue it with seedbed grow --resume {path}")


def why(predictions: list[dict]) -> str:
    failed = [p["id"] for p in predictions if p["held"] is False]
    unknown = [p["id"] for p in predictions if p["held"] is None]
    if failed:
        return f"prediction{'s' if len(failed) > 1 else ''} {', '.join(failed)} did not hold: " + "; ".join(p["measured"] for p in predictions if p["held"] is False)
    if unknown:
        return f"prediction{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} could not be measured"
    return "every prediction held, each against the threshold written before the run"


def observer_cost(paths: list[Path]) -> dict[str, float | None]:
    """Seconds spent in observers against seconds of training, summed over the trial's runs."""
    observe = train = 0.0
    for p in paths:
        run = Run.open(p, readonly=True)
        observe += run.last_metric("time/observe_s") or 0.0
        train += run.last_metric("time/train_s") or 0.0
        run.close()
    return {"observer_seconds": round(observe, 2), "train_seconds": round(train, 2), "share": round(observe / train, 4) if train else None}


# ── growing ─────────────────────────────────────────────────────────────────
def grow_one(trial: Trial, scale: str, cond: Conditions, folder: Path, name: str, say: Say, progress: bool, console: Console | None) -> None:
    """Grow one of a trial's runs, FOLDER/NAME, with the trial's observers and the live watcher."""
    from seedbed.model import Transformer
    from seedbed.soil import resolve
    from seedbed.watch import Watcher

    resolved, soil = resolve(cond)
    observers = trial.observers(Transformer(resolved.architecture), soil)
    # a run found started is resumed: a Ray task retried after its worker died continues from its checkpoint
    grow_or_resume(cond, folder, name, say, observers=observers, observe_every=trial.observe_every[scale],
                   listeners=[Watcher(say, trial.watch_series)], progress=progress, console=console)


def grow_in_pool(trial: Trial, scale: str, jobs: list[tuple[Path, str, Conditions]], workers: int | None, top: Path, say: Say,
                 executor: Executor | None = None) -> None:
    """Grow every (folder, name, conditions) through the executor (default: `workers` local processes)."""
    top = Path(top).resolve()  # absolute: a Ray worker may start in another folder
    again = f"continue one with: seedbed grow --resume {top}/RUN"
    grown = [Job(str((Path(f).resolve() / k).relative_to(top)), _grow_in_process,
                 (trial.name, trial.chosen, scale, c.model_dump(mode="json"), str(Path(f).resolve()), k, str(top)))
             for f, k, c in jobs]
    (executor or Executor()).grow(grown, top, say, workers, again)


def _grow_in_process(trial_name: str, options: dict, scale: str, cond: dict, folder: str, name: str, top: str) -> None:
    """One run in a worker (a pool process or a Ray task): no progress bar, lines prefixed with the run's name."""
    from seedbed.conditions import parse

    console = Console()
    where = str((Path(folder) / name).relative_to(top))
    say = lambda m: console.print(f"[dim]{where}:[/] {m}", soft_wrap=True, highlight=False)
    grow_one(get(trial_name, options), scale, parse(cond), Path(folder), name, say, False, console)


# ── many seeds ──────────────────────────────────────────────────────────────
def run_seeds(trial: Trial, scale: str, first: int, n: int, out: Path | None, runs_dir: Path, console: Console,
              executor: Executor | None = None) -> Path:
    """The trial on `n` seeds, each a whole trial in OUT/seed-K, grown by the executor (default: local processes);
    then OUT/summary.json and OUT/report.html."""
    say: Say = lambda m: console.print(m, soft_wrap=True, highlight=False)
    seeds = replicate_seeds(trial, scale, first, n)
    last = seeds[-1] + trial.seeds_per_trial(scale) - 1
    out = Path(out) if out is not None else free_folder(runs_dir, f"{trial.name}-{scale}-seeds{first}-{last}")
    announce(trial, f"{scale}, {n} seed{'s' if n > 1 else ''} from {first}", say)
    rule = holds_rule(trial.holds_on, n)
    say(f"  across seeds: {rule}")
    summary_pre = {
        "trial": trial.name, "claim": trial.claim, "source": trial.source, "scale": scale, "options": trial.chosen,
        "seeds": seeds, "holds_on": trial.holds_on, "rule": rule,
        "predictions": [asdict(p) for p in trial.predictions],
        "trial_file": source_sha256(trial)[0], "trial_file_sha256": source_sha256(trial)[1], "prediction_written": now(),
    }
    write_atomic(new_folder(out) / PREDICTION, json.dumps(summary_pre, indent=1).encode())
    pres = {s: preregister(trial, scale, s, out / f"seed-{s}") for s in seeds}
    say(f"predictions written: {out / PREDICTION} and seed-*/{PREDICTION}")

    jobs = [(out / f"seed-{s}", k, c) for s in seeds for k, c in trial.conditions(scale, s).items()]
    if jobs:
        grow_in_pool(trial, scale, jobs, None, out, say, executor)
    later = [(out / f"seed-{s}", k, c) for s in seeds for k, c in later_runs(trial, scale, s, out / f"seed-{s}", pres[s], say).items()]
    if later:
        grow_in_pool(trial, scale, later, None, out, say, executor)
    per_seed = []
    for s in seeds:
        r = finish(trial, pres[s], out / f"seed-{s}", say)
        per_seed.append(r)
        say(f"  seed {s}: {r['verdict']}" + ("" if r["verdict"] == HELD else f" ({escape(r['why'])})"))
    summary = summarise(summary_pre, per_seed)
    write_atomic(out / SUMMARY, json.dumps(summary, indent=1).encode())
    write_atomic(out / "report.html", summary_page(summary).encode("utf-8"))
    colour = {HELD: "green", NOT_HELD: "red"}.get(summary["verdict"], "yellow")
    for p in summary["predictions"]:
        lo, hi = p["wilson95"]
        say(f"  ({p['id']}) held on {p['held']} of {n} seeds (95% interval {lo:.0%}–{hi:.0%})")
    say(f"[bold {colour}]verdict across seeds: {summary['verdict']}[/] ({summary['why']}) → {out / 'report.html'}")
    return out


def replicate_seeds(trial: Trial, scale: str, first: int, n: int) -> list[int]:
    """The seed of each of the `n` trials: consecutive, or blocks apart when one trial grows several seeds (none shared)."""
    stride = trial.seeds_per_trial(scale)
    return [first + i * stride for i in range(n)]


def holds_rule(holds_on: float, n: int) -> str:
    return f"the claim holds if the verdict held on ≥ {holds_on:.0%} of the seeds ({needed(holds_on, n)} of {n})"


def needed(holds_on: float, n: int) -> int:
    return math.ceil(round(holds_on * n, 9))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% for z = 1.96): sound at 0 of n and n of n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def rate(flags: list[bool]) -> tuple[float, float, float, str]:
    """Share, Wilson 95% interval, and a phrase: `3/10 (95% 0.11–0.60)`."""
    k, n = sum(flags), len(flags)
    lo, hi = wilson(k, n)
    return k / n, lo, hi, f"{k}/{n} (95% {lo:.2f}–{hi:.2f})"


def few(flags: list[bool], at_most: float) -> bool:
    """A rate "few" show: at most `at_most`, with the Wilson 95% upper bound below 1/2."""
    share, _, hi, _ = rate(flags)
    return share <= at_most and hi < 0.5


def most(flags: list[bool], at_least: float) -> bool:
    """A rate "most" show: at least `at_least`, with the Wilson 95% lower bound above 1/2."""
    share, lo, _, _ = rate(flags)
    return share >= at_least and lo > 0.5


def summarise(pre: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per prediction and per verdict; the verdict across seeds from the pre-registered rate only."""
    n = len(results)
    held = sum(r["verdict"] == HELD for r in results)
    unknown = sum(r["verdict"] == INCONCLUSIVE for r in results)
    need = needed(pre["holds_on"], n)
    if held >= need:
        overall, because = HELD, f"held on {held} of {n} seeds; {need} needed"
    elif held + unknown >= need:
        overall, because = INCONCLUSIVE, f"held on {held} of {n} seeds, {unknown} inconclusive; {need} needed"
    else:
        overall, because = NOT_HELD, f"held on {held} of {n} seeds; {need} needed"
    predictions = []
    for p in pre["predictions"]:
        marks = [next(q["held"] for q in r["predictions"] if q["id"] == p["id"]) for r in results]
        k = sum(m is True for m in marks)
        predictions.append({**p, "held": k, "did_not_hold": sum(m is False for m in marks), "unmeasured": sum(m is None for m in marks),
                            "wilson95": list(wilson(k, n))})
    return {
        **pre,
        "verdict": overall,
        "why": because,
        "held_seeds": held,
        "needed": need,
        "verdict_wilson95": list(wilson(held, n)),
        "predictions": predictions,
        "per_seed": [{"seed": r["seed"], "verdict": r["verdict"], "why": r["why"], "folder": f"seed-{r['seed']}",
                      "report": f"seed-{r['seed']}/report.html", "wall_seconds": r["wall_seconds"],
                      "held": {p["id"]: p["held"] for p in r["predictions"]}} for r in results],
        "finished": now(),
        "wall_seconds": round(seconds_since(pre["prediction_written"]), 1),
    }


def rewrite_summary_report(folder: Path) -> Path:
    """`seedbed report FOLDER` for a --seeds folder: its report.html again from summary.json (untrusted: checked)."""
    from seedbed import contained

    path = folder / SUMMARY
    fix = "run the trial with --seeds again to rewrite it"
    try:
        summary = json.loads(contained.open_regular(path, contained.JSON_MAX_BYTES))
        page = summary_page(summary)
    except contained.Unsafe as err:
        raise SeedbedError(f"{err}: {fix}") from None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise SeedbedError(f"'{path}' is not a summary seedbed can read ({type(err).__name__}: {err}): {fix}") from None
    out = folder / "report.html"
    write_atomic(out, page.encode("utf-8"))
    return out


def summary_page(s: dict[str, Any]) -> str:
    """The summary's report.html: the claim, the rule, the count per prediction, and a link to every seed's report."""
    from seedbed.report import CSS, esc, table, when

    badge = s["verdict"].replace(" ", "-")
    mark = {True: "✓", False: "✗", None: "–"}
    n = len(s["per_seed"])
    pred_rows = [[esc(p["id"]), esc(p["text"]), esc(p["threshold"]), f"{p['held']} of {n}",
                  f"{p['wilson95'][0]:.0%}–{p['wilson95'][1]:.0%}"] for p in s["predictions"]]
    ids = [p["id"] for p in s["predictions"]]
    seed_rows = [[f'<a href="seed-{int(r["seed"])}/report.html">seed {int(r["seed"])}</a>', esc(r["verdict"]),
                  *[mark[r["held"].get(i)] for i in ids], esc(r["why"])] for r in s["per_seed"]]
    lo, hi = s["verdict_wilson95"]
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(s['trial'])} over {n} seeds — {esc(s['verdict'])} · seedbed</title><style>{CSS}</style></head><body><main>"
        f'<header><p class="kicker">seedbed trial, over seeds</p>'
        f'<h1>{esc(s["trial"])}<span class="badge {badge}">{esc(s["verdict"])}</span></h1>'
        f'<p class="meta">scale {esc(s["scale"])} · seeds {esc(", ".join(map(str, s["seeds"])))} · finished {when(s["finished"])}</p></header>'
        f'<section id="claim"><h2>Claim</h2><blockquote>{esc(s["claim"])}</blockquote><p class="source">Source: {esc(s["source"])}</p></section>'
        f'<section id="rule"><h2>Verdict across seeds</h2><p class="note">Rule written down {when(s["prediction_written"])}, '
        f'before any seed was grown: {esc(s["rule"])}.</p><p class="verdict {badge}">{esc(s["verdict"].capitalize())}: {esc(s["why"])} '
        f'(95% interval for the rate: {lo:.0%}–{hi:.0%}).</p></section>'
        f'<section id="predictions"><h2>Per prediction</h2>'
        + table(["", "prediction", "threshold", "held on", "95% interval (Wilson)"], pred_rows)
        + '</section><section id="seeds"><h2>Per seed</h2>'
        + table(["seed (its report)", "verdict", *ids, "why"], seed_rows)
        + "</section><footer>written by <code>seedbed trial --seeds</code></footer></main></body></html>\n"
    )
