"""What the live page shows, read from the runs folder without ever writing to it.

Every run folder is untrusted input and may be half-written (a run being created, a crash in
the middle of a write) or corrupt. So: a run is named by its path under the runs folder and is
served only if `list_runs` finds it there (no link is entered, nothing hidden, nothing outside);
its index is opened `mode=ro` and never rolled back (a hot journal is shown as such, not undone);
and anything that cannot be read becomes a `problem` line on the page instead of an exception.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedbed import contained
from seedbed.errors import SeedbedError
from seedbed.run import (
    LIFE_EVENTS,
    NAME_OK,
    CheckpointRecord,
    Run,
    RunLock,
    find_folders,
    list_runs,
)

MAX_POINTS = 4000  # per series in a snapshot: a browser draws this many at once without strain
REPORT_MAX_BYTES = 64 * 2**20
TRIAL_FILES = ("trial.json", "summary.json", "prediction.json")
UNREADABLE = (SeedbedError, sqlite3.Error, OSError, ValueError, UnicodeDecodeError, TypeError)


class NotServed(SeedbedError):
    """A path the server does not serve: not a run (or report) inside the runs folder."""


# ── naming things inside the runs folder ─────────────────────────────────────
def relative_parts(rel: str) -> list[str]:
    """The parts of a path under the runs folder, refused unless every one is a plain name (no `..`, no `/x`)."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or len(parts) > 6 or not all(NAME_OK.fullmatch(p) for p in parts):
        raise NotServed(f"{rel!r} is not a path under the runs folder")
    return parts


def run_folder(root: Path, rel: str) -> Path:
    """The run folder `rel` names, if `list_runs(root)` lists it (so no link, hidden folder or outside path)."""
    path = root.joinpath(*relative_parts(rel))
    if path not in set(list_runs(root)):
        raise NotServed(f"no run '{rel}' under the runs folder")
    return path


def report_file(root: Path, rel: str) -> bytes:
    """The bytes of `rel/report.html` under the runs folder: no link on the way, a regular file, size checked."""
    path = contained.inside(root, "/".join(relative_parts(rel) + ["report.html"]))
    try:
        return contained.open_regular(path, REPORT_MAX_BYTES)
    except FileNotFoundError:
        raise NotServed(f"no report in '{rel}'") from None


# ── reading an index ─────────────────────────────────────────────────────────
def reader(path: Path) -> Run:
    """A Run over its index opened read-only. Unlike `Run(path, readonly=True)` this never rolls back a
    crashed write (that writes): a run with a hot journal reads as unreadable until its grower resumes it."""
    Run.check_files(path)  # run.sqlite and the rest: real files, not links
    index = path / "run.sqlite"
    if not index.is_file():
        raise SeedbedError("no run.sqlite yet")
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=5, check_same_thread=False)
    try:
        db.execute("SELECT 1 FROM checkpoints LIMIT 1")
    except sqlite3.Error as err:
        db.close()
        raise SeedbedError(f"run.sqlite is not a readable run index ({err})") from None
    run = object.__new__(Run)
    run.path, run.db, run.lock = path, db, None
    return run


def number(v: Any) -> float | None:
    """A value for JSON: finite numbers only (a run folder may hold anything in a REAL column)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def status(run: Run) -> str:
    """Run.status(), kept apart from it only to say it reads: growing, done, interrupted, diverged, crashed, new."""
    marks = ", ".join("?" * len(LIFE_EVENTS))
    row = run.db.execute(f"SELECT kind FROM events WHERE kind IN ({marks}) ORDER BY rowid DESC LIMIT 1", LIFE_EVENTS).fetchone()
    if row is None:
        return "new" if RunLock(run.path).holder() is None else "growing"
    if row[0] in ("done", "interrupted", "diverged"):
        return row[0]
    return "growing" if RunLock(run.path).holder() is not None else "crashed"


def stamp(path: Path) -> tuple:
    """What changes when a run's index or lock changes: cheap to compare, so nothing is read when nothing moved.

    SQLite's file change counter (4 bytes at offset 24, bumped by every commit in rollback-journal mode)
    catches a commit that left the size alone within one tick of the file system's coarse clock."""
    out: list = [_change_counter(path / "run.sqlite")]
    for name in ("run.sqlite", "run.sqlite-journal", "run.sqlite-wal", "run.lock", "conditions.toml"):
        try:
            st = os.lstat(path / name)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


def _change_counter(index: Path) -> bytes | None:
    try:
        fd = os.open(index, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.pread(fd, 4, 24)
    except OSError:
        return None
    finally:
        os.close(fd)


# ── the runs page ────────────────────────────────────────────────────────────
@dataclass
class RunsTable:
    """Rows of the runs page, each re-read only when its run's files changed (and its status every call)."""

    root: Path
    cache: dict[Path, tuple[tuple, dict]] = field(default_factory=dict)

    def rows(self) -> dict:
        runs = [self._row(p) for p in list_runs(self.root)]
        self.cache = {p: v for p, v in self.cache.items() if p.exists()}
        return {"root": str(self.root), "runs": runs, "trials": trials(self.root)}

    def _row(self, path: Path) -> dict:
        key = stamp(path)
        cached = self.cache.get(path)
        if cached is None or cached[0] != key:
            cached = (key, run_row(self.root, path))
            self.cache[path] = cached
        row = dict(cached[1])
        if row["status"] in ("growing", "crashed", "new"):  # the lock goes when its holder dies: look again
            row["status"] = _status_of(path) or row["status"]
        return row


def _status_of(path: Path) -> str | None:
    try:
        run = reader(path)
    except UNREADABLE:
        return None
    try:
        return status(run)
    except UNREADABLE:
        return None
    finally:
        run.db.close()


def run_row(root: Path, path: Path) -> dict:
    """One run on the runs page; what cannot be read is said in `problem`, never raised."""
    rel = path.relative_to(root).as_posix()
    row: dict[str, Any] = {"path": rel, "soil": None, "params": None, "steps": None, "total": None, "status": "unreadable",
                           "parent": None, "loss": None, "problem": None, "report": _report_of(root, path)}
    row.update(_trial_of(root, path))
    try:
        run = reader(path)
    except UNREADABLE as err:
        row["problem"] = _line(err)
        return row
    try:
        row["status"], row["steps"] = status(run), run.steps_done()
        row["loss"] = number(run.last_metric("train/loss"))
        parent = run.parent()
        row["parent"] = None if parent is None else str(parent)
        row["soil"], row["total"], row["params"] = _described(path, _file_key(path / "conditions.toml"))
    except UNREADABLE as err:
        row["problem"] = _line(err)
    finally:
        run.db.close()
    return row


def _file_key(f: Path) -> tuple | None:
    try:
        st = os.lstat(f)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


@functools.lru_cache(maxsize=1024)
def _described(path: Path, key: tuple | None) -> tuple[str, int, int]:
    """Soil, steps and parameters from a run's conditions, parsed once per version of the file (`key`: its stat), as parsing is slow."""
    import torch

    from seedbed import conditions as conditions_module
    from seedbed.model import Transformer

    cond = conditions_module.load(path / "conditions.toml", purpose="read")
    with torch.device("meta"):  # shapes only
        return cond.soil.kind, cond.schedule.steps, Transformer(cond.architecture).n_params()


def _line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:300]


def _trial_folder(root: Path, path: Path) -> Path | None:
    """The nearest folder above a run (inside the runs folder) that a trial wrote, if any."""
    for folder in path.parents:
        if folder == root or root not in folder.parents:
            return None
        if any(os.path.lexists(folder / f) for f in TRIAL_FILES):
            return folder
    return None


def _trial_of(root: Path, path: Path) -> dict:
    folder = _trial_folder(root, path)
    if folder is None:
        return {"trial": None, "verdict": None}
    return {"trial": folder.relative_to(root).as_posix(), "verdict": _verdict(folder)}


def _verdict(folder: Path) -> str:
    """The verdict in a trial folder's trial.json or summary.json; `pending` before judging, `unreadable` if malformed."""
    for name in ("summary.json", "trial.json"):
        f = folder / name
        if not os.path.lexists(f):
            continue
        try:
            found = json.loads(contained.open_regular(f, contained.JSON_MAX_BYTES))
        except UNREADABLE:
            return "unreadable"
        verdict = found.get("verdict") if isinstance(found, dict) else None
        return verdict if isinstance(verdict, str) and verdict.isprintable() else "unreadable"
    return "pending"


def _report_of(root: Path, path: Path) -> str | None:
    """The nearest report.html at or above a run, as the path of its folder under the runs folder."""
    for folder in [path, *path.parents]:
        if folder != root and root not in folder.parents:
            return None
        if contained._is_link(folder):
            return None
        if _has_report(folder):
            return folder.relative_to(root).as_posix() or None
    return None


def trials(root: Path, depth: int = 3) -> list[dict]:
    """Every trial folder under the runs folder (one `seedbed trial` wrote), with its verdict and report.
    Like `list_runs`: links and hidden folders are not entered."""
    found = find_folders(root, depth, lambda child: any(os.path.lexists(child / f) for f in TRIAL_FILES), enter_found=True)
    out = []
    for folder in found:
        rel = folder.relative_to(root).as_posix()
        out.append({"path": rel, "verdict": _verdict(folder), "report": rel if _has_report(folder) else None})
    return out


def _has_report(folder: Path) -> bool:
    return (folder / "report.html").is_file() and not contained._is_link(folder / "report.html")


# ── one run, live ────────────────────────────────────────────────────────────
@dataclass
class Follower:
    """Follows one run's index: a snapshot first, then only the rows that landed since (`poll`).

    Reads happen only when the index's files changed (`stamp`), and the status is looked at
    every `status_every` seconds (a crash changes no file). A resume deletes rows past its
    checkpoint and writes them again, so a `resume` event (or rowids going back) sends a new snapshot.
    """

    path: Path
    status_every: float = 2.0
    last_stamp: tuple | None = None
    metric_rowid: int = 0
    event_rowid: int = 0
    checkpoints: list = field(default_factory=list)
    last_status: str | None = None
    status_at: float = 0.0

    def snapshot(self) -> dict:
        run = reader(self.path)
        try:
            self.last_stamp = stamp(self.path)
            run.db.execute("BEGIN")  # one consistent view while a grower commits
            self.metric_rowid = run.db.execute("SELECT coalesce(max(rowid), 0) FROM metrics").fetchone()[0]
            rows = run.db.execute("SELECT name, step, value FROM metrics WHERE rowid <= ? ORDER BY name, step",
                                  (self.metric_rowid,)).fetchall()
            events = self._events(run)
            self.checkpoints = _checkpoints(run)
            run.db.execute("COMMIT")
            self.last_status, self.status_at = status(run), time.monotonic()
            try:
                cond = run.conditions
                meta = {"total": cond.schedule.steps, "soil": cond.soil.kind, "name": cond.name}
            except UNREADABLE as err:
                meta = {"problem": _line(err)}
        finally:
            run.db.close()
        return {"series": _series(rows, thin=True), "events": events, "checkpoints": self.checkpoints,
                "status": self.last_status, "meta": meta}

    def poll(self) -> tuple[str, dict] | None:
        """("append", rows since) or ("snapshot", all) if something changed; None if nothing did."""
        now = time.monotonic()
        key = stamp(self.path)
        if key == self.last_stamp and now - self.status_at < self.status_every:
            return None
        run = reader(self.path)
        try:
            self.last_stamp = key
            run.db.execute("BEGIN")
            top = run.db.execute("SELECT coalesce(max(rowid), 0) FROM metrics").fetchone()[0]
            rows = run.db.execute("SELECT name, step, value FROM metrics WHERE rowid > ? ORDER BY rowid",
                                  (self.metric_rowid,)).fetchall()
            events = self._events(run)
            checkpoints = _checkpoints(run)
            run.db.execute("COMMIT")
            state = status(run)
            self.status_at = now
        finally:
            run.db.close()
        if top < self.metric_rowid or any(e["kind"] == "resume" for e in events):
            return "snapshot", self.snapshot()
        self.metric_rowid = max(self.metric_rowid, top)
        delta: dict[str, Any] = {}
        if rows:
            delta["series"] = _series(rows, thin=False)
        if events:
            delta["events"] = events
        if checkpoints != self.checkpoints:
            self.checkpoints = delta["checkpoints"] = checkpoints
        if state != self.last_status:
            self.last_status = delta["status"] = state
        return ("append", delta) if delta else None

    def _events(self, run: Run) -> list[dict]:
        rows = run.db.execute("SELECT rowid, step, kind, text, time FROM events WHERE rowid > ? ORDER BY rowid",
                              (self.event_rowid,)).fetchall()
        out = []
        for rowid, step, kind, text, at in rows:
            self.event_rowid = max(self.event_rowid, rowid)
            if isinstance(step, int) and isinstance(kind, str) and isinstance(text, str):
                out.append({"step": step, "kind": kind, "text": text[:2000], "time": number(at)})
        return out


def _checkpoints(run: Run) -> list[int]:
    return [s for (s,) in run.db.execute("SELECT step FROM checkpoints ORDER BY step") if isinstance(s, int)]


def _series(rows: list[tuple], thin: bool) -> dict[str, list[list]]:
    """{name: [steps, values]} from (name, step, value) rows; a long series thinned to MAX_POINTS (its last kept)."""
    out: dict[str, list[list]] = {}
    for name, step, value in rows:
        if isinstance(name, str) and isinstance(step, int):
            steps, values = out.setdefault(name[:200], [[], []])
            steps.append(step)
            values.append(number(value))
    if thin:
        for name, (steps, values) in out.items():
            if len(steps) > MAX_POINTS:
                k = math.ceil(len(steps) / MAX_POINTS)
                keep = list(range(0, len(steps), k)) + ([len(steps) - 1] if (len(steps) - 1) % k else [])
                out[name] = [[steps[i] for i in keep], [values[i] for i in keep]]
    return out


def checkpoint_records(path: Path) -> list[CheckpointRecord]:
    run = reader(path)
    try:
        return run.checkpoints()
    finally:
        run.db.close()
