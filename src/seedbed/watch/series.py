"""A series: checkpoints of one model grown elsewhere (Pythia's step1000/, step2000/, …), watched after the fact.

`watch_series` loads each checkpoint with `seedbed.read.load` (a Hugging Face folder of the GPT-2
family, seedbed.read.hf), calls the observers a grown run gets on it — every head's previous-token
and induction score, the loss by position and the in-context-learning score, and the weight norm —
and logs what they see into a new run folder exactly as growth would have, step by step. Then
it runs the same emergence detector, with the same thresholds and series, as a growing run's
`Watcher`, and writes the same report (`seedbed.report`).

The losses are measured on a text the user gives (`text`: tokenized with the folder's
tokenizer.json) or, by default, on repeated random tokens, whose second half only a model
that copies from context can predict: `watch/answer_loss` is then the loss on that half.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import torch

from seedbed import contained
from seedbed.errors import SeedbedError
from seedbed.read.hf import is_hf_folder, step_of
from seedbed.read.load import Grown, load
from seedbed.read.scores import default_length, repeated_tokens
from seedbed.report import write_report
from seedbed.run import Run
from seedbed.soil.base import Batch
from seedbed.watch.emergence import transition
from seedbed.watch.live import DEFAULT_SERIES
from seedbed.watch.observers import HeadScores, HeldOutLosses, weight_norm

TEXT_MAX_BYTES = 16 * 2**20
TEXT_ROWS = 8  # rows of the given text measured at each checkpoint
TEXT_CONTEXT = 1024  # tokens a row, at most (Olsson et al.'s ICL score uses 512)
REPEATS = 16  # rows of repeated random tokens


def series_folders(paths: list[Path]) -> list[tuple[int, Path]]:
    """(step, folder) of each checkpoint, by step: one folder of checkpoint folders, or the checkpoint folders themselves."""
    if len(paths) == 1 and paths[0].is_dir() and not is_hf_folder(paths[0]):
        if not contained.inside(paths[0].parent, paths[0].name).exists():
            raise SeedbedError(f"'{paths[0]}' does not exist: give a folder of checkpoints (step1000/, step2000/, …)")
        paths = sorted(p for p in paths[0].iterdir() if p.is_dir() and not p.is_symlink() and is_hf_folder(p))
    for p in paths:
        if not p.is_dir():
            raise SeedbedError(f"'{p}' is not a folder: a series is a folder of checkpoint folders, or a list of them")
        if not is_hf_folder(p):
            raise SeedbedError(f"'{p}' is no Hugging Face model folder (no config.json): give checkpoint folders such as step1000/")
    steps = [(step_of(p), p) for p in paths]
    unnamed = [p for s, p in steps if s is None]
    if unnamed:
        raise SeedbedError(f"'{unnamed[0]}' does not say its step: name each checkpoint folder by its step (step1000, checkpoint-1000)")
    series = sorted(steps)  # type: ignore[arg-type]
    taken = [s for (s, _), (t, _) in pairwise(series) if s == t]
    if taken:
        raise SeedbedError(f"two checkpoints of step {taken[0]}: give each step once")
    if len(series) < 2:
        found = f"only '{series[0][1]}'" if series else "no checkpoint folder"
        raise SeedbedError(f"a series needs at least 2 checkpoints and {found} was found: give a folder of step folders, or several folders")
    return series  # type: ignore[return-value]


def repeated_batch(grown: Grown, seed: int) -> Batch:
    """Random tokens repeated once; the answer targets are the second copy (bar its first token, which nothing predicts)."""
    L = default_length(grown.model, None)
    if L < 2:
        raise SeedbedError(f"n_ctx = {grown.model.cfg.n_ctx} is too short for repeated sequences: give --text")
    tokens = repeated_tokens(grown.model.cfg.d_vocab, L, batch=REPEATS, seed=seed, bos=None)
    answer = torch.zeros(REPEATS, 2 * L - 1, dtype=torch.bool)
    answer[:, L:] = True  # target i is token i + 1: tokens L + 1 … 2L - 1 repeat a token whose successor came before
    return Batch(tokens, answer)


def text_batch(grown: Grown, text: Path) -> Batch:
    """The text's first TEXT_ROWS rows of up to TEXT_CONTEXT tokens (every target is an answer: the loss on the text)."""
    if grown.tokenizer is None:
        raise SeedbedError(f"'{grown.run}' has no tokenizer.json (or the tokenizers package is missing): leave out --text")
    try:
        ids = grown.tokenizer.encode(contained.open_regular(text, TEXT_MAX_BYTES).decode("utf-8"))
    except UnicodeDecodeError:
        raise SeedbedError(f"--text '{text}' is not UTF-8 text") from None
    except FileNotFoundError:
        raise SeedbedError(f"--text '{text}' does not exist") from None
    width = min(grown.model.cfg.n_ctx, TEXT_CONTEXT) + 1
    rows = min(TEXT_ROWS, len(ids) // width)
    if rows < 1:
        raise SeedbedError(f"--text '{text}' has {len(ids)} tokens: give at least {width} (one row of the model's context)")
    tokens = torch.tensor(ids[: rows * width]).view(rows, width)
    return Batch(tokens, torch.ones(rows, width - 1, dtype=torch.bool))


def free_run_folder(runs_dir: Path, name: str) -> Path:
    """runs_dir/name, or name-2, name-3 … if taken: an earlier watch is never overwritten."""
    path, n = runs_dir / name, 2
    while path.exists() or path.is_symlink():
        path, n = runs_dir / f"{name}-{n}", n + 1
    return path


def watch_series(paths: list[Path], out: Path | None = None, text: Path | None = None, seed: int = 0,
                 say: Callable[[str], None] = print) -> Path:
    """Observe every checkpoint of the series, find emergences, write the report; return the new run folder."""
    series = series_folders([Path(p) for p in paths])
    first = load(series[0][1])
    name = (paths[0].name if len(paths) == 1 else series[0][1].parent.name) or "series"
    out = Path(out) if out is not None else free_run_folder(Path("runs"), f"{name}-watch")
    batch = text_batch(first, text) if text is not None else repeated_batch(first, seed)
    observers = [HeldOutLosses(batch=batch), weight_norm]
    if default_length(first.model, None) >= 2:
        observers.append(HeadScores(bos=None, seed=seed))
    run = Run.create(out.parent, out.name, first.conditions, artifacts={})
    try:
        run.log_event(series[0][0], "start", f"watching {len(series)} checkpoints: {', '.join(p.name for _, p in series)}")
        for i, (step, folder) in enumerate(series):
            grown = first if i == 0 else load(folder)
            if grown.model.cfg != first.model.cfg:
                raise SeedbedError(f"'{folder}' is a different architecture from '{series[0][1]}': a series is one model's checkpoints")
            observed: dict[str, float] = {}
            for observe in observers:
                observed.update(observe(grown.model, step))
            run.log_metrics(step, observed)
            run.commit()
            say(f"step {step:,}: {_summary(observed)}")
        for line in detect(run):
            say(f"emergence — {line}")
        run.log_event(series[-1][0], "done", f"watched {len(series)} checkpoints")
    finally:
        run.close()
    write_report(out)
    return out


def detect(run: Run) -> list[str]:
    """The growing run's Watcher series, through the same detector; each emergence logged as an event."""
    lines = []
    names = run.metric_names()
    for pattern, (label, min_size) in DEFAULT_SERIES.items():
        if pattern.endswith("/*"):  # the head highest at the last checkpoint, as the live watcher picks it
            heads = [n for n in names if n.startswith(pattern[:-1])]
            name = max(heads, key=lambda n: run.metric(n)[-1][1], default=None)
        else:
            name = pattern if pattern in names else None
        if name is None:
            continue
        history = run.metric(name)
        found = transition(name, [s for s, _ in history], [v for _, v in history])
        if found is None or abs(found.size) < min_size:
            continue
        said = label.format(head=name.rsplit("/", 1)[-1])
        run.log_event(found.step, "emergence", json.dumps({**found.as_dict(), "label": said}))
        lines.append(found.line(said))
    return lines


def _summary(observed: dict[str, float]) -> str:
    parts = [f"{k.removeprefix('watch/')} {observed[k]:.3f}" for k in ("watch/answer_loss", "watch/icl_score") if k in observed]
    for kind in ("induction", "previous_token"):
        heads = {k: v for k, v in observed.items() if k.startswith(f"watch/{kind}/")}
        if heads:
            best = max(heads, key=heads.get)  # type: ignore[arg-type]
            parts.append(f"best {kind.replace('_', '-')} {best.rsplit('/', 1)[-1]} {heads[best]:.2f}")
    return " · ".join(parts)
