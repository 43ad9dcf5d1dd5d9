"""The Run: a portable folder holding everything about one growth.

```
runs/<name>/
  conditions.toml     fully resolved, with seed and package versions
  checkpoints/        step-000512.safetensors (+ .state.pt for resuming)
  run.sqlite          metrics(step, name, value) · checkpoints(step, file, sha256, tokens_seen) · events(step, kind, text)
  artifacts.json      what the soil says a reader needs (e.g. the tokenizer)
```
Paths inside run.sqlite are relative, so the folder can be zipped and opened elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedbed import conditions as conditions_module
from seedbed.conditions import Conditions
from seedbed.errors import SeedbedError

SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (step INTEGER NOT NULL, name TEXT NOT NULL, value REAL);
CREATE INDEX IF NOT EXISTS metrics_name_step ON metrics (name, step);
CREATE TABLE IF NOT EXISTS checkpoints (step INTEGER PRIMARY KEY, file TEXT NOT NULL, sha256 TEXT NOT NULL, tokens_seen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (step INTEGER NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL, time REAL);
"""
NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class CheckpointRecord:
    step: int
    file: str  # relative to the run folder
    sha256: str
    tokens_seen: int


class Run:
    """A run folder and its SQLite index. Only one process (rank 0) writes to it."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:  # other ranks, and readers, never take the write lock
                self.db = sqlite3.connect(f"file:{self.path / 'run.sqlite'}?mode=ro", uri=True, timeout=30)
                self.db.execute("SELECT 1 FROM checkpoints LIMIT 1")
            else:
                self.db = sqlite3.connect(self.path / "run.sqlite", timeout=30)
                self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise SeedbedError(f"'{self.path / 'run.sqlite'}' is not a readable run index ({err}): restore it from a copy") from None

    # ── creating and opening ────────────────────────────────────────────────
    @staticmethod
    def check_new(runs_dir: Path, name: str) -> Path:
        """The folder a new run would take; an error if the name is bad or taken."""
        if not NAME_OK.match(name):
            raise SeedbedError(f"run name {name!r} is not allowed: use letters, digits, '.', '_' or '-'")
        path = Path(runs_dir) / name
        if path.exists():
            raise SeedbedError(
                f"run '{path}' already exists: choose another with --name, or continue it with seedbed grow --resume {path}"
            )
        return path

    @classmethod
    def create(cls, runs_dir: Path, name: str, conditions: Conditions, artifacts: dict[str, Any]) -> "Run":
        path = cls.check_new(runs_dir, name)
        (path / "checkpoints").mkdir(parents=True)
        conditions.save(path / "conditions.toml")
        (path / "artifacts.json").write_text(json.dumps(artifacts))
        return cls(path)

    @staticmethod
    def check_exists(path: Path) -> None:
        if not (path / "run.sqlite").is_file() or not (path / "conditions.toml").is_file():
            raise SeedbedError(f"'{path}' is not a run folder (no run.sqlite / conditions.toml): give runs/<name> (seedbed runs lists them)")

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> "Run":
        path = Path(path)
        cls.check_exists(path)
        return cls(path, readonly)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def conditions(self) -> Conditions:
        return conditions_module.load(self.path / "conditions.toml")

    @property
    def artifacts(self) -> dict[str, Any]:
        return self.read_artifacts(self.path)

    @staticmethod
    def read_artifacts(path: Path) -> dict[str, Any]:
        f = Path(path) / "artifacts.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    # ── writing ─────────────────────────────────────────────────────────────
    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        """Buffered until `commit()`; the growth loop commits at evals and checkpoints."""
        self.db.executemany("INSERT INTO metrics VALUES (?, ?, ?)", [(step, k, float(v)) for k, v in values.items()])

    def log_event(self, step: int, kind: str, text: str) -> None:
        self.db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (step, kind, text, time.time()))
        self.db.commit()

    def record_checkpoint(self, rec: CheckpointRecord) -> None:
        self.db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)", (rec.step, rec.file, rec.sha256, rec.tokens_seen))
        self.db.commit()

    def commit(self) -> None:
        self.db.commit()

    def forget_after(self, step: int) -> None:
        """Drop metrics and checkpoint records past `step` (a resume regrows them)."""
        self.db.execute("DELETE FROM metrics WHERE step > ?", (step,))
        self.db.execute("DELETE FROM checkpoints WHERE step > ?", (step,))
        self.db.commit()

    def forget_checkpoint(self, step: int) -> None:
        self.db.execute("DELETE FROM checkpoints WHERE step = ?", (step,))
        self.db.commit()

    # ── reading ─────────────────────────────────────────────────────────────
    def checkpoints(self) -> list[CheckpointRecord]:
        rows = self.db.execute("SELECT step, file, sha256, tokens_seen FROM checkpoints ORDER BY step").fetchall()
        return [CheckpointRecord(*r) for r in rows]

    def metric(self, name: str) -> list[tuple[int, float]]:
        return self.db.execute("SELECT step, value FROM metrics WHERE name = ? ORDER BY step", (name,)).fetchall()

    def metric_names(self) -> list[str]:
        """Every metric name logged so far, sorted (observers add their own names)."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT name FROM metrics ORDER BY name")]

    def last_metric(self, name: str) -> float | None:
        row = self.db.execute("SELECT value FROM metrics WHERE name = ? ORDER BY step DESC LIMIT 1", (name,)).fetchone()
        return None if row is None else row[0]

    def events(self) -> list[tuple[int, str, str]]:
        return self.db.execute("SELECT step, kind, text FROM events ORDER BY rowid").fetchall()

    def steps_done(self) -> int:
        row = self.db.execute("SELECT MAX(step) FROM checkpoints").fetchone()
        return row[0] or 0

    def status(self) -> str:
        """done, interrupted, growing, crashed or new — from the events and the lock file."""
        # the newest event of growth's own life: other events (emergences, corrupt checkpoints) say nothing of it
        row = self.db.execute(
            "SELECT kind FROM events WHERE kind IN ('start', 'resume', 'done', 'interrupted') ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        last = row[0] if row else None
        if last in ("done", "interrupted"):
            return last
        if last is None:
            return "new"
        return "growing" if RunLock(self.path).holder() is not None else "crashed"

    def close(self) -> None:
        self.db.close()


class RunLock:
    """A pid file, so two processes never grow the same run at once."""

    def __init__(self, run_path: Path) -> None:
        self.file = Path(run_path) / "run.lock"

    def holder(self) -> int | None:
        """The pid of a live process holding the lock, or None."""
        try:
            pid = int(self.file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return None
        if pid <= 0 or pid == os.getpid():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return None if _is_zombie(pid) else pid

    def acquire(self) -> None:
        pid = self.holder()
        if pid is not None:
            raise SeedbedError(f"run '{self.file.parent}' is being grown by process {pid}: wait for it, or stop it first")
        self.file.write_text(str(os.getpid()))

    def release(self) -> None:
        self.file.unlink(missing_ok=True)


def _is_zombie(pid: int) -> bool:
    """A killed process nobody has reaped yet still answers kill(pid, 0) (Linux: state Z)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def list_runs(runs_dir: str | Path) -> list[Path]:
    """Run folders directly under `runs_dir`, by name."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "run.sqlite").is_file())
