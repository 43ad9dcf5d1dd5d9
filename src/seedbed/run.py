"""The Run: a portable folder holding everything about one growth.

```
runs/<name>/
  conditions.toml     fully resolved, with seed and package versions
  checkpoints/        step-000512.safetensors (+ .state.pt for resuming)
  run.sqlite          metrics(step, name, value) · checkpoints(step, file, sha256, tokens_seen) · events(step, kind, text)
                      · lineage(parent, step, sha256): a child run's parent checkpoint ([init] from)
  artifacts.json      what the soil says a reader needs (e.g. the tokenizer)
```
Paths inside run.sqlite are relative, so the folder can be zipped and opened elsewhere.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedbed import conditions as conditions_module
from seedbed import contained
from seedbed.conditions import Conditions
from seedbed.errors import SeedbedError

SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (step INTEGER NOT NULL, name TEXT NOT NULL, value REAL);
CREATE INDEX IF NOT EXISTS metrics_name_step ON metrics (name, step);
CREATE TABLE IF NOT EXISTS checkpoints (step INTEGER PRIMARY KEY, file TEXT NOT NULL, sha256 TEXT NOT NULL, tokens_seen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (step INTEGER NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL, time REAL);
CREATE TABLE IF NOT EXISTS lineage (parent TEXT NOT NULL, step INTEGER NOT NULL, sha256 TEXT NOT NULL);
"""
NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # used with fullmatch: `$` would let a final newline through
# what a run folder may hold, and of which kind: anything else there is refused (a link, a FIFO, a file for a folder)
RUN_FILES = {"run.sqlite": "file", "conditions.toml": "file", "artifacts.json": "file", "checkpoints": "dir",
             "run.sqlite-journal": "file", "run.sqlite-wal": "file", "run.sqlite-shm": "file", "run.lock": "file"}
LIFE_EVENTS = ("start", "resume", "done", "interrupted", "diverged")  # the events of growth's own life


@dataclass(frozen=True)
class ParentRecord:
    """The checkpoint a child run grew from: the parent's folder as its conditions name it, the step, the sha256."""

    path: str
    step: int
    sha256: str

    def __str__(self) -> str:
        return f"{self.path}@{self.step}"


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
        self.check_files(self.path)
        self.lock: RunLock | None = None  # held while this process grows the run (from its creation, for a new one)
        index = self.path / "run.sqlite"
        try:
            if readonly:  # other ranks, and readers, never take the write lock
                _roll_back_hot_journal(index)
                self.db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=30)
                self.db.execute("SELECT 1 FROM checkpoints LIMIT 1")
            else:
                self.db = sqlite3.connect(index, timeout=30)
        except sqlite3.DatabaseError as err:
            if (self.path / "run.sqlite-journal").exists() and not os.access(self.path, os.W_OK):
                raise SeedbedError(
                    f"'{index}' has an unfinished write (run.sqlite-journal) that only a writable folder can undo: "
                    "copy the run folder somewhere writable and open the copy"
                ) from None
            raise SeedbedError(f"'{index}' is not a readable run index ({err}): restore it from a copy") from None
        if not readonly:
            try:
                with self._writing():
                    self.db.executescript(SCHEMA)
            except sqlite3.DatabaseError as err:
                raise SeedbedError(f"'{index}' is not a readable run index ({err}): restore it from a copy") from None

    @staticmethod
    def check_files(path: Path) -> None:
        """Refuse a run whose own files are links or of the wrong kind (a `checkpoints` link, a FIFO for run.sqlite)."""
        for name, kind in RUN_FILES.items():
            contained.check_kind(Path(path) / name, kind)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a failed write to run.sqlite (a full disk, above all) into one line naming the file and the free space."""
        try:
            yield
        except sqlite3.OperationalError as err:
            index = self.path / "run.sqlite"
            if "full" in str(err) or "disk" in str(err):
                raise SeedbedError(
                    f"cannot write '{index}': {err} ({contained.free_space(self.path)} free on its disk): "
                    f"free some space, then continue with seedbed grow --resume {self.path}"
                ) from None
            raise SeedbedError(f"cannot write '{index}': {err}: check that its folder is writable and no other program holds it") from None

    # ── creating and opening ────────────────────────────────────────────────
    @staticmethod
    def check_new(runs_dir: Path, name: str) -> Path:
        """The folder a new run would take; an error if the name is bad or taken.

        A folder left by a run that died before its first checkpoint (nothing recorded, nobody
        growing it) does not take the name: `create` replaces it.
        """
        if not isinstance(name, str) or not NAME_OK.fullmatch(name):
            raise SeedbedError(f"run name {name!r} is not allowed: use letters, digits, '.', '_' or '-'")
        path = Path(runs_dir) / name
        if os.path.lexists(path) and not _empty_dead_run(path):
            raise SeedbedError(
                f"run '{path}' already exists: choose another with --name, or continue it with seedbed grow --resume {path}"
            )
        return path

    @classmethod
    def create(cls, runs_dir: Path, name: str, conditions: Conditions, artifacts: dict[str, Any]) -> Run:
        """Make the run folder whole under a hidden name, then rename it into place: a failed start leaves nothing.

        The new run's lock is taken before it appears and held by the returned Run (its grower) until
        `close()`, so nobody can mistake it for a dead run meanwhile.
        """
        path = cls.check_new(runs_dir, name)
        runs_dir = Path(runs_dir)
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=runs_dir, prefix=f".{name}.", suffix=".new"))
        except OSError as err:
            raise SeedbedError(f"cannot use '{runs_dir}' for a new run: {err.strerror or err}: check the path, its permissions and free space") from None
        lock = RunLock(tmp)
        try:
            (tmp / "checkpoints").mkdir()
            conditions.save(tmp / "conditions.toml")
            (tmp / "artifacts.json").write_text(json.dumps(artifacts))
            index = cls(tmp)  # the index, with its tables
            if conditions.init is not None and conditions.init.step is not None and conditions.init.sha256 is not None:
                index.record_parent(ParentRecord(conditions.init.from_, conditions.init.step, conditions.init.sha256))
            index.close()
            lock.acquire()
            _publish(tmp, path)
        except BaseException as err:
            lock.release()
            contained.remove_tree(runs_dir, tmp.name)
            if isinstance(err, OSError):
                raise SeedbedError(
                    f"cannot use '{path}' for a new run: {err.strerror or err} ({contained.free_space(runs_dir)} free on its disk): "
                    "check the folder, its permissions and free space"
                ) from None
            raise
        lock.file = path / "run.lock"  # the same file, renamed with its folder
        run = cls(path)
        run.lock = lock
        return run

    @staticmethod
    def check_exists(path: Path) -> None:
        if not (path / "run.sqlite").is_file() or not (path / "conditions.toml").is_file():
            raise SeedbedError(f"'{path}' is not a run folder (no run.sqlite / conditions.toml): give runs/<name> (seedbed runs lists them)")
        Run.check_files(path)

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> Run:
        path = Path(path)
        cls.check_exists(path)
        return cls(path, readonly)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def conditions(self) -> Conditions:
        return conditions_module.load(self.path / "conditions.toml", purpose="read")  # reading needs less than growing

    @property
    def artifacts(self) -> dict[str, Any]:
        return self.read_artifacts(self.path)

    @staticmethod
    def read_artifacts(path: Path) -> dict[str, Any]:
        f = Path(path) / "artifacts.json"
        if not os.path.lexists(f):
            return {}
        try:
            found = json.loads(contained.open_regular(f, contained.JSON_MAX_BYTES))
        except (ValueError, UnicodeDecodeError):
            raise SeedbedError(f"'{f}' is not valid JSON: restore the run folder from a copy") from None
        if not isinstance(found, dict):
            raise SeedbedError(f"'{f}' does not hold a JSON object: restore the run folder from a copy")
        return found

    def remove_partial_writes(self) -> None:
        """Delete the `*.tmp` remains of checkpoint writes a crash cut short: in checkpoints/ only, links unfollowed."""
        with contained.folder(self.path, "checkpoints") as fd:
            for name in os.listdir(fd):
                if name.endswith(".tmp") and not contained.is_dir_in(fd, name):
                    os.unlink(name, dir_fd=fd)  # a link is removed itself, its target untouched

    # ── writing ─────────────────────────────────────────────────────────────
    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        """Buffered until `commit()`; the growth loop commits at evals and checkpoints."""
        with self._writing():
            self.db.executemany("INSERT INTO metrics VALUES (?, ?, ?)", [(step, k, float(v)) for k, v in values.items()])

    def log_event(self, step: int, kind: str, text: str) -> None:
        with self._writing():
            self.db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (step, kind, text, time.time()))
            self.db.commit()

    def record_checkpoint(self, rec: CheckpointRecord) -> None:
        with self._writing():
            self.db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)", (rec.step, rec.file, rec.sha256, rec.tokens_seen))
            self.db.commit()

    def record_parent(self, parent: ParentRecord) -> None:
        with self._writing():
            self.db.execute("DELETE FROM lineage")
            self.db.execute("INSERT INTO lineage VALUES (?, ?, ?)", (parent.path, parent.step, parent.sha256))
            self.db.commit()

    def commit(self) -> None:
        with self._writing():
            self.db.commit()

    def forget_after(self, step: int) -> None:
        """Drop metrics and checkpoint records past `step` (a resume regrows them)."""
        with self._writing():
            self.db.execute("DELETE FROM metrics WHERE step > ?", (step,))
            self.db.execute("DELETE FROM checkpoints WHERE step > ?", (step,))
            self.db.commit()

    def forget_checkpoint(self, step: int) -> None:
        with self._writing():
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

    def parent(self) -> ParentRecord | None:
        """The checkpoint this run grew from, if it is a child (runs from before lineage was recorded have no table)."""
        try:
            row = self.db.execute("SELECT parent, step, sha256 FROM lineage LIMIT 1").fetchone()
        except sqlite3.OperationalError:
            return None
        return None if row is None else ParentRecord(*row)

    def diverged_at(self) -> int | None:
        """The step at which growth found the loss or gradients non-finite, if it did."""
        row = self.db.execute("SELECT step FROM events WHERE kind = 'diverged' ORDER BY rowid DESC LIMIT 1").fetchone()
        return None if row is None else row[0]

    def status(self) -> str:
        """done, interrupted, diverged, growing, crashed or new — from the events and the lock."""
        # the newest event of growth's own life: other events (emergences, corrupt checkpoints) say nothing of it
        marks = ", ".join("?" * len(LIFE_EVENTS))
        row = self.db.execute(f"SELECT kind FROM events WHERE kind IN ({marks}) ORDER BY rowid DESC LIMIT 1", LIFE_EVENTS).fetchone()
        last = row[0] if row else None
        if last in ("done", "interrupted", "diverged"):
            return last
        if last is None:
            return "new"
        return "growing" if RunLock(self.path).holder() is not None else "crashed"

    def hold_lock(self) -> None:
        """Lock the run for growing (a new run holds its lock already); one line if another process grows it."""
        if self.lock is None:
            lock = RunLock(self.path)
            lock.acquire()
            self.lock = lock

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def close(self) -> None:
        self.db.close()
        self.release_lock()


def _roll_back_hot_journal(index: Path) -> None:
    """Let SQLite undo a write that a crash cut short (a hot journal), which only a writable open can do.

    A read-only open of such an index fails ("attempt to write a readonly database"); a writable
    open rolls the journal back on its first read and changes nothing else.
    """
    journal = index.with_name(index.name + "-journal")
    if not journal.is_file() or journal.stat().st_size == 0 or not os.access(index.parent, os.W_OK):
        return
    try:
        db = sqlite3.connect(index, timeout=30)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError:
        pass  # the read-only open that follows says what is wrong


class RunLock:
    """An exclusive `flock` on run.lock, so two processes never grow the same run at once.

    The kernel drops the lock when its holder dies (kill -9 included), so a crashed run never
    stays locked; the file also holds the holder's pid, for `holder()` and error messages.
    """

    def __init__(self, run_path: Path) -> None:
        self.file = Path(run_path) / "run.lock"
        self.fd: int | None = None

    def holder(self) -> int | None:
        """The pid of the process holding the lock (0 if it has not written it yet), or None if nobody holds it."""
        try:
            fd = os.open(self.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # missing, a link, unreadable: nobody can hold it through this name
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_pid(fd)
            return None  # the shared lock is dropped when fd closes
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Take the lock or say who holds it; kept until `release()` (or this process ends)."""
        while self.fd is None:
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as err:
                if contained._is_link(self.file):
                    raise contained.Unsafe(f"'{self.file}' is a symbolic link: remove it (a run folder holds only its own files)") from None
                raise SeedbedError(f"cannot lock '{self.file}': {err.strerror or err}: check the folder's permissions") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise contained.Unsafe(f"'{self.file}' is not a regular file: remove it")
            if not _flock_exclusive(fd):
                pid = _read_pid(fd)
                os.close(fd)
                who = f"process {pid}" if pid else "another process"
                raise SeedbedError(f"run '{self.file.parent}' is being grown by {who}: wait for it, or stop it first") from None
            if not _same_file(fd, self.file):  # released (and unlinked) between our open and our lock: try again
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self.fd = fd

    def release(self) -> None:
        """Unlink the file, then drop the lock (closing it), so a waiting opener sees a fresh file."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if _same_file(fd, self.file):
                self.file.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _flock_exclusive(fd: int, tries: int = 5) -> bool:
    """Try for the exclusive lock a few times: a `holder()` probe holds a shared one for microseconds."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if _read_pid(fd) or i == tries - 1:  # a pid written: a real holder, no probe
                return False
            time.sleep(0.02)
    return False


def _key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (it may have been unlinked or replaced)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == _key(fd)


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError, UnicodeDecodeError):
        return 0


def _empty_dead_run(path: Path, locked_by_us: bool = False) -> bool:
    """A folder left by a run that died before its first checkpoint: only a run's own files, nothing
    recorded, nobody (else) holding its lock. Such a folder may be replaced by a new run of the same name."""
    try:
        contained.check_kind(path, "dir")
        if not os.path.isdir(path) or not set(os.listdir(path)) <= set(RUN_FILES) or not (path / "run.sqlite").is_file():
            return False
        Run.check_files(path)
        with contained.folder(path, "checkpoints") as fd:
            if not all(contained.is_regular_in(fd, n) for n in os.listdir(fd)):
                return False
        run = Run(path, readonly=True)
        try:
            return not run.checkpoints() and (locked_by_us or RunLock(path).holder() is None)
        finally:
            run.close()
    except (SeedbedError, OSError, sqlite3.DatabaseError):
        return False


def _publish(tmp: Path, path: Path) -> None:
    """Rename the finished folder `tmp` to `path`, first moving aside (then deleting) an empty dead run there.

    The dead run's lock is held while it is checked and moved, so two starts cannot both take it.
    """
    aside: Path | None = None
    if os.path.lexists(path):
        old_lock = RunLock(path)
        try:
            old_lock.acquire()
        except contained.Unsafe:
            raise SeedbedError(f"run '{path}' already exists: choose another with --name") from None
        try:
            if not _empty_dead_run(path, locked_by_us=True):
                raise SeedbedError(
                    f"run '{path}' already exists: choose another with --name, or continue it with seedbed grow --resume {path}"
                )
            aside = path.with_name(tmp.name.removesuffix(".new") + ".old")
            os.rename(path, aside)
        finally:
            old_lock.file = (aside or path) / "run.lock"
            old_lock.release()
    try:
        os.rename(tmp, path)
    except OSError:  # somebody else's run appeared there meanwhile
        raise SeedbedError(f"run '{path}' already exists: choose another with --name") from None
    finally:
        if aside is not None:
            try:
                contained.remove_tree(path.parent, aside.name)
            except OSError:
                pass  # a hidden leftover (.NAME.….old) that `seedbed runs` does not list


def list_runs(runs_dir: str | Path, depth: int = 3) -> list[Path]:
    """Run folders under `runs_dir`, sorted by path: plain runs, and the runs inside trial folders
    (`NAME/main`, `NAME/seed-3/control`, …) down to `depth` levels. Hidden folders (runs being
    created or removed) and symbolic links are not entered."""
    return find_folders(Path(runs_dir), depth, lambda folder: (folder / "run.sqlite").is_file(), enter_found=False)


def find_folders(root: Path, depth: int, wanted: Callable[[Path], bool], enter_found: bool) -> list[Path]:
    """The folders under `root`, down to `depth` levels, for which `wanted` holds, sorted by path.

    Hidden folders and symbolic links are never entered (a shared runs folder must not lead outside
    itself); with `enter_found`, a wanted folder is searched too (a trial folder holds runs).
    """
    found: list[Path] = []

    def walk(folder: Path, left: int) -> None:
        try:
            children = sorted(folder.iterdir())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or child.is_symlink() or not child.is_dir():
                continue
            hit = wanted(child)
            if hit:
                found.append(child)
            if left > 1 and (enter_found or not hit):
                walk(child, left - 1)

    if root.is_dir():
        walk(root, depth)
    return sorted(found)
