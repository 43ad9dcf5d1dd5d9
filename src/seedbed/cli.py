"""The `seedbed` command. Every user mistake becomes one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from seedbed.errors import SeedbedError
from seedbed.threads import settle_process

try:  # typer >= 0.20 vendors click; older typers use click itself
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="seedbed: grow small models from declared conditions, then read what grew.",
)
console = Console(width=None if sys.stdout.isatty() else 120)  # piped output: wide enough for the runs table


@app.command()
def grow(
    conditions: Optional[Path] = typer.Argument(None, help="a TOML file of conditions (see examples/)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this folder from its newest valid checkpoint"),
    name: Optional[str] = typer.Option(None, "--name", help="run name (default: the conditions' name, else the file's stem)"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where runs live"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Grow a model from CONDITIONS (or continue one with --resume runs/NAME)."""
    from seedbed import conditions as conditions_module
    from seedbed.grow import Interrupted
    from seedbed.grow import grow as grow_run

    cond = None
    if conditions is not None:
        cond = conditions_module.load(conditions)
        name = name or cond.name or conditions.stem
    try:
        grow_run(cond, runs_dir=runs_dir, name=name, resume=resume, progress=progress, console=console)
    except Interrupted:
        raise typer.Exit(130) from None


@app.command()
def runs(runs_dir: Path = typer.Argument(Path("runs"), help="folder of runs")) -> None:
    """List the runs: name, soil, parameters, steps done, last losses, status, and the parent of a child run."""
    from seedbed.run import list_runs

    found = list_runs(runs_dir)
    if not found:
        console.print(f"no runs in {runs_dir}/ yet: grow one with seedbed grow examples/induction.toml")
        return
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("name", "soil", "params", "steps", "train loss", "eval loss", "status"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("name", "soil", "status") else "right")
    table.add_column("parent", overflow="fold")
    problems = []
    for path in found:
        try:
            table.add_row(_shown(path, runs_dir), *_run_row(path)[1:])
        except SeedbedError as err:
            table.add_row(_shown(path, runs_dir), "?", "?", "?", "?", "?", "unreadable", "")
            problems.append(f"{_shown(path, runs_dir)}: {err}")
    console.print(table)
    for line in problems:
        console.print(line, soft_wrap=True, markup=False)


def _shown(path: Path, runs_dir: Path) -> str:
    """A run's name as `seedbed runs` shows it: its path under the runs folder (a trial's runs are `TRIAL/main`, …)."""
    return path.relative_to(runs_dir).as_posix()


def _run_row(path: Path) -> list[str]:
    """One line of `seedbed runs`; a SeedbedError if the run cannot be read."""
    import torch

    from seedbed.model import Transformer
    from seedbed.run import Run

    run = Run.open(path, readonly=True)
    try:
        cond = run.conditions
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            n_params = Transformer(cond.architecture).n_params()
        fmt = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        return [
            run.name,
            cond.soil.kind,
            f"{n_params:,}",
            f"{run.steps_done():,}/{cond.schedule.steps:,}",
            fmt(run.last_metric("train/loss")),
            fmt(run.last_metric("eval/loss")),
            run.status(),
            _parent_cell(run.parent()),
        ]
    finally:
        run.close()


def _parent_cell(parent) -> str:
    """`from PARENT@STEP` for a child run: printable text only, no markup (the run folder is untrusted)."""
    from rich.markup import escape

    if parent is None:
        return ""
    text = f"from {parent}"
    return escape(text if text.isprintable() else text.encode("unicode_escape").decode("ascii"))


@app.command()
def read(
    run: Path = typer.Argument(..., help="the run folder, e.g. runs/NAME, or a Hugging Face GPT-2 folder (docs/hf.md)"),
    step: Optional[int] = typer.Option(None, "--step", help="the checkpoint to read (default: the newest)"),
    out: Optional[Path] = typer.Option(None, "--out", help="a new or empty folder for the pictures (default: RUN/read/step-N, numbered if taken)"),
    seed: int = typer.Option(0, "--seed", help="seed of the random sequences the scores are measured on"),
) -> None:
    """Score every attention head of RUN, name the ones that stand out, and draw their patterns."""
    from seedbed.read.load import load
    from seedbed.read.summary import THRESHOLDS, draw_patterns, pictured_heads, read_heads, standout_lines

    if out is not None:
        _check_new_or_empty(out)
    grown = load(run, step)
    reading = read_heads(grown, seed=seed)
    names = list(reading.scores)
    table = Table(box=box.SIMPLE_HEAD, title=f"{grown.run.name} at step {grown.step:,}: head scores", title_justify="left")
    table.add_column("head", no_wrap=True)
    for n in names:
        table.add_column(f"{n.replace('_', '-')} (≥{THRESHOLDS[n]})", justify="right", no_wrap=True)
    n_layers, n_heads = reading.scores[names[0]].shape
    for l in range(n_layers):
        for h in range(n_heads):
            cells = []
            for n in names:
                v = float(reading.scores[n][l, h])
                cells.append("–" if v != v else f"[bold]{v:.2f}[/bold]" if v >= THRESHOLDS[n] else f"{v:.2f}")
            table.add_row(f"L{l}H{h}", *cells)
    console.print(table)
    console.print(_held_out_loss(grown.run, grown.step) if not grown.hf else "a Hugging Face model folder: no held-out loss recorded",
                  markup=False)
    if any(bool(t.isnan().any()) for t in reading.scores.values()):
        console.print(f"– : not measurable: n_ctx={grown.model.cfg.n_ctx} is too short for the repeated sequences", markup=False)
    for line in standout_lines(reading):
        console.print(f"stand out — {line}", soft_wrap=True, markup=False)
    if not reading.standouts:
        console.print("no head passes a threshold: nothing stands out at this step", markup=False)
    for c in reading.compositions:
        console.print(f"strongest {c}", soft_wrap=True, markup=False)
    folder = out or _free_folder(grown.run / "read", f"step-{grown.step:06d}" + (f"-seed{seed}" if seed else ""))
    paths = draw_patterns(grown, pictured_heads(reading), folder, seed=seed)
    console.print(f"attention patterns: {', '.join(str(p) for p in paths) or 'none (no head could be scored)'}", soft_wrap=True, markup=False)


def _check_new_or_empty(out: Path) -> None:
    """`--out` may be new or an empty folder: pictures of an earlier read are never overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SeedbedError(f"--out '{out}' already exists and is not an empty folder: choose a new --out, or leave it out")


def _free_folder(parent: Path, name: str) -> Path:
    """parent/name, or parent/name-2, -3 … if an earlier read is there; never outside the run (`read/` may be a link)."""
    from seedbed.contained import check_kind

    check_kind(parent, "dir")
    folder, n = parent / name, 2
    while folder.exists() or folder.is_symlink():
        folder, n = parent / f"{name}-{n}", n + 1
    return folder


def _held_out_loss(run: Path, step: int) -> str:
    """The held-out loss logged at `step` (or the nearest evaluation before it), for context."""
    from seedbed.run import Run

    r = Run.open(run, readonly=True)
    try:
        logged = [(s, v) for s, v in r.metric("eval/loss") if s <= step and v is not None]  # NaN is stored as NULL
        diverged = r.diverged_at()
    finally:
        r.close()
    line = f"no held-out loss logged by step {step:,}" if not logged else f"held-out loss at step {logged[-1][0]:,}: {logged[-1][1]:.4f}"
    if diverged is not None:  # the checkpoints end before the step that went bad: say so, or a reader takes them for the end
        line += f" — this run diverged at step {diverged:,}; its newest checkpoint holds the weights before"
    return line


@app.command()
def watch(
    series: list[Path] = typer.Argument(..., help="a folder of checkpoint folders (step1000/, step2000/, …), or the checkpoint folders"),
    text: Optional[Path] = typer.Option(None, "--text", help="measure the loss on this UTF-8 text (default: repeated random tokens)"),
    out: Optional[Path] = typer.Option(None, "--out", help="the new run folder for the observations (default: runs/NAME-watch, numbered if taken)"),
    seed: int = typer.Option(0, "--seed", help="seed of the random sequences the scores are measured on"),
) -> None:
    """Replay the observers over a series of Hugging Face checkpoints, find emergences, write the report (docs/hf.md)."""
    from seedbed.watch.series import watch_series

    folder = watch_series(series, out=out, text=text, seed=seed, say=lambda line: console.print(line, soft_wrap=True, markup=False))
    console.print(f"report → {folder / 'report.html'}", soft_wrap=True, markup=False)


@app.command()
def export(
    run: Path = typer.Argument(..., help="the run folder, e.g. runs/NAME"),
    outdir: Path = typer.Argument(..., help="folder to write: new, empty, or an earlier seedbed export (replaced)"),
    to: str = typer.Option("hf", "--to", help="hf: a Hugging Face GPT-2 folder; transformer-lens: the same folder, which TransformerLens 4 loads"),
    step: Optional[int] = typer.Option(None, "--step", help="the checkpoint to export (default: the newest)"),
) -> None:
    """Export RUN to OUTDIR for Hugging Face transformers and TransformerLens (docs/export.md)."""
    import json

    from seedbed.export import MARKER
    from seedbed.export import export as export_run

    out = export_run(run, outdir, to=to, step=step)
    done = json.loads((out / MARKER).read_text(encoding="utf-8"))
    console.print(f"exported {run} at step {done['step']:,} → {out}", soft_wrap=True, markup=False)
    if to == "transformer-lens":
        load = f"TransformerBridge.boot_transformers({str(out)!r}, device='cpu')"
    else:
        load = f"AutoModelForCausalLM.from_pretrained({str(out)!r})"
    console.print(f"load it with {load} (see docs/export.md)", soft_wrap=True, markup=False)


@app.command()
def llc(
    run: Path = typer.Argument(..., help="the run folder, e.g. runs/NAME (a trial's runs: runs/TRIAL/main)"),
    calibrate: bool = typer.Option(False, "--calibrate", help="try a grid of step sizes and localizations on one checkpoint; suggest one"),
    step: Optional[int] = typer.Option(None, "--step", help="measure this checkpoint only (with --calibrate: default the newest)"),
    every: Optional[int] = typer.Option(None, "--every", help="measure only the checkpoints at multiples of N steps (and the newest)"),
    step_size: float = typer.Option(1e-4, "--step-size", help="SGLD step size ε"),
    localization: float = typer.Option(10.0, "--localization", help="SGLD localization γ: the pull back toward the checkpoint"),
    n_beta: Optional[float] = typer.Option(None, "--n-beta", help="inverse temperature nβ (default: m / log m, m the batch size)"),
    chains: int = typer.Option(4, "--chains", help="SGLD chains per checkpoint"),
    draws: int = typer.Option(100, "--draws", help="SGLD steps averaged per chain"),
    burnin: int = typer.Option(50, "--burnin", help="SGLD steps before the draws"),
    batch_size: int = typer.Option(32, "--batch-size", help="sequences per SGLD step"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of the chains' noise (default: the run's seed)"),
) -> None:
    """The local learning coefficient at RUN's checkpoints, written into the run (docs/llc.md)."""
    from seedbed.watch.llc import Sampling, calibrate_command, llc_command

    sampling = Sampling(step_size=step_size, localization=localization, n_beta=n_beta, chains=chains, draws=draws,
                        burnin=burnin, batch_size=batch_size)
    if calibrate:
        calibrate_command(run, sampling, step, seed, console)
    else:
        llc_command(run, sampling, step, every, seed, console)


@app.command()
def trial(
    name: str = typer.Argument(..., help="which trial (seedbed trials lists them)"),
    scale: str = typer.Option("small", "--scale", help="tiny (seconds), small (minutes on a 2-core CPU) or full (the published scale: a GPU)"),
    seed: int = typer.Option(0, "--seed", help="the seed of every run the trial grows (with --seeds: the first seed)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="run the trial on N seeds from --seed, in parallel, and summarise the verdicts"),
    option: list[str] = typer.Option([], "--option", "-o", help="a trial's own setting, NAME=VALUE (e.g. seeds: n=5); repeatable"),
    out: Optional[Path] = typer.Option(None, "--out", help="the trial's folder (default: runs/NAME-SCALE-seedS, or -seedsS-E with --seeds; numbered if taken)"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where the default folder goes"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
    ray: Optional[str] = typer.Option(None, "--ray", help="with --seeds: grow each run as a task on the Ray cluster at auto or HOST:PORT (docs/sweep.md)"),
) -> None:
    """Run one trial: write its predictions, grow, watch, measure, judge them, and write its HTML report."""
    from seedbed.grow import Interrupted
    from seedbed.trials.base import parse_options
    from seedbed.trials.runner import run_trial

    try:
        run_trial(name, scale=scale, seed=seed, out=out, runs_dir=runs_dir, console=console, progress=progress,
                  options=parse_options(option), seeds=seeds, ray=ray)
    except Interrupted:
        raise typer.Exit(130) from None


@app.command()
def sweep(
    conditions: Path = typer.Argument(..., help="a TOML file of conditions: what every run of the grid starts from"),
    seeds: str = typer.Option(..., "--seeds", help="the seeds, A-B inclusive (e.g. 0-99), or one seed"),
    set_: list[str] = typer.Option([], "--set", help="KEY=V1,V2,…: grow each value (e.g. optimizer.lr=1e-3,3e-3); repeatable: every combination"),
    out: Optional[Path] = typer.Option(None, "--out", help="the sweep's folder (default: runs/sweep-STEM-seedsA-B); run again to continue it"),
    ray: Optional[str] = typer.Option(None, "--ray", help="grow each run as a task on the Ray cluster at auto or HOST:PORT (docs/sweep.md)"),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where the default folder goes"),
) -> None:
    """Grow a grid of runs (every --set value × every seed), then gather one table and a summary report (docs/sweep.md)."""
    from seedbed.grow import Interrupted
    from seedbed.sweep import run_sweep

    try:
        run_sweep(conditions, seeds, set_, out=out, ray=ray, runs_dir=runs_dir, console=console)
    except Interrupted:
        raise typer.Exit(130) from None


@app.command()
def trials(runs_dir: Path = typer.Argument(Path("runs"), help="folder whose trial runs hold the last verdicts")) -> None:
    """List the trials: each claim, and its last verdict in RUNS_DIR."""
    from seedbed.trials import REGISTRY, last_verdicts

    last = last_verdicts(runs_dir)
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("trial", "claim", "last verdict", "where"):
        table.add_column(col, overflow="fold")
    for name, cls in sorted(REGISTRY.items()):
        r = last.get(name)
        verdict = "not run yet" if r is None else f"{r['verdict']} ({r['scale']}, {r['seeds']})"
        table.add_row(name, cls.claim, verdict, "" if r is None else r["path"])
    console.print(table)


@app.command()
def report(run: Path = typer.Argument(..., help="a trial's folder or any run folder")) -> None:
    """Write RUN/report.html again: the trial's claim, prediction, figures and verdict (or a run's curves)."""
    from seedbed.report import report_command

    path = report_command(run)
    console.print(f"report → {path}", soft_wrap=True, markup=False)


@app.command()
def serve(
    runs_dir: Path = typer.Argument(Path("runs"), help="folder of runs to show (read-only)"),
    port: int = typer.Option(8765, "--port", help="port to listen on (0: any free one)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; anything but 127.0.0.1 lets other machines in"),
) -> None:
    """The live page: watch runs grow in a browser, emergences as they happen, inside any checkpoint (docs/serve.md)."""
    from seedbed.serve import serve as serve_runs

    serve_runs(runs_dir, host=host, port=port, say=lambda text: console.print(text, soft_wrap=True, markup=False))


@app.command()
def worlds() -> None:
    """List the worlds: name, what each tests, its actions (seedbed play WORLD runs one)."""
    from seedbed.worlds import WORLDS, gym_id
    from seedbed.worlds.grid import ACTION_NAMES
    from seedbed.worlds.registry import OTHER_WORLDS

    table = Table(box=box.SIMPLE_HEAD)
    for col in ("world", "tests", "actions", "gymnasium id"):
        table.add_column(col, overflow="fold", no_wrap=col in ("world", "gymnasium id"))  # names whole, whatever the width
    rows = {name: (cls.tests, ", ".join(ACTION_NAMES), gym_id(name)) for name, cls in WORLDS.items()} | OTHER_WORLDS
    for name, row in sorted(rows.items()):
        table.add_row(name, *row)
    console.print(table)


@app.command()
def play(
    world: str = typer.Argument(..., help="which world (seedbed worlds lists them)"),
    agent: str = typer.Option("q", "--agent", help="q, sarsa or safe-sarsa (trained first), or random"),
    seed: int = typer.Option(0, "--seed", help="seed of the training and of the episode shown"),
    episodes: int = typer.Option(500, "--episodes", help="training episodes before the episode shown"),
    render: Optional[Path] = typer.Option(None, "--render", help="also write the episode's frames to this new .png"),
) -> None:
    """Train an agent in WORLD, then show one greedy episode as text, with its return and hidden performance."""
    from seedbed.worlds.play import check_render_path, save_png, step_line, strip
    from seedbed.worlds.play import play as play_world

    if render is not None:
        check_render_path(render)
    played = play_world(world, agent, seed=seed, episodes=episodes)
    trained = "untrained" if agent == "random" else f"after {episodes:,} training episodes"
    console.print(f"{world}, {agent} agent {trained}, seed {seed}\n{played.start}", markup=False, highlight=False)
    for i, step in enumerate(played.steps, 1):
        console.print(f"{step_line(i, step)}\n{step.text}", markup=False, highlight=False)
    end = "reached the end" if played.terminated else f"stopped at the step limit ({len(played.steps)})"
    console.print(f"return {played.total:g} · hidden performance {played.performance:g} · {len(played.steps)} steps · {end}",
                  markup=False, highlight=False)
    if render is not None:
        save_png(render, strip(played.frames))
        console.print(f"frames → {render}", soft_wrap=True, markup=False)


@app.command()
def chat(
    run: Path = typer.Argument(..., help="a run grown on text, e.g. runs/shakespeare-baby"),
    preset: str = typer.Option("qa", "--preset", help="qa: the essay's header, Q:/A: lines; none: raw continuation"),
    temperature: float = typer.Option(0.8, "--temperature", help="0: the most likely token; higher: more varied"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="sample among the K most likely tokens only"),
    max_new: int = typer.Option(200, "--max-new", help="the most tokens an answer may have"),
    seed: int = typer.Option(0, "--seed", help="seed of the sampling (turn i uses seed + i): same seed, same answers"),
    step: Optional[int] = typer.Option(None, "--step", help="the checkpoint to talk to (default: the newest)"),
    ask: Optional[str] = typer.Option(None, "--ask", help="ask one question, print the answer, and end"),
) -> None:
    """Talk to RUN: questions from stdin, answers streamed as sampled; nothing it writes is run (docs/chat.md)."""
    from seedbed.chat import Settings, ask_once, session

    settings = Settings(temperature=temperature, top_k=top_k, max_new=max_new, seed=seed)
    try:
        if ask is not None:
            ask_once(run, ask, preset, settings, step)
        else:
            session(run, preset, settings, step)
    except KeyboardInterrupt:  # the transcript is saved and its path printed; exit as an interrupted program does
        raise typer.Exit(130) from None

def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    settle_process()  # before torch loads: OpenMP threads that soon sleep when idle, as many as the usable cores
    try:
        code = app(args=argv, standalone_mode=False)  # returns the code of a typer.Exit
        if isinstance(code, int) and code:
            sys.exit(code)
    except SeedbedError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except NoArgsIsHelpError as err:
        print(err.format_message())
        sys.exit(0)
    except UsageError as err:
        where = err.ctx.command_path if err.ctx else "seedbed"
        print(f"error: {err.format_message()} (see {where} --help)", file=sys.stderr)
        sys.exit(2)
    except ClickException as err:
        print(f"error: {err.format_message()}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # a folder that cannot be written, a full disk: say which file and why
        where = f" '{err.filename}'" if err.filename else ""
        print(f"error: cannot use{where}: {err.strerror or err}: check the path, its permissions and free space", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("stopped without saving (Ctrl-C twice): resume from the last checkpoint with seedbed grow --resume", file=sys.stderr)
        sys.exit(130)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
