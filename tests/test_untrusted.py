"""A run folder from elsewhere is untrusted input; locks, journals and full disks (issue 11).

The rule: every path taken from a run folder resolves inside it; only regular files are
opened; nothing outside the folder is written, renamed or deleted; sizes are checked
before anything is read into memory. Every user-facing failure is one line.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from conftest import cli, tiny
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from seedbed import checkpoint, contained
from seedbed.errors import SeedbedError
from seedbed.files import write_atomic
from seedbed.grow import grow
from seedbed.report import read_result
from seedbed.run import Run, RunLock
from seedbed.trials.base import last_verdicts

LAST = "checkpoints/step-000040.safetensors"


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> Path:
    """One tiny run (checkpoints up to step 40), grown once; tests work on copies."""
    runs = tmp_path_factory.mktemp("grown")
    return grow(tiny(), runs_dir=runs, progress=False).path


@pytest.fixture
def run_copy(grown, tmp_path) -> Path:
    dst = tmp_path / "runs" / "tiny"
    shutil.copytree(grown, dst)
    return dst


def set_record(path: Path, step: int, **fields) -> None:
    db = sqlite3.connect(path / "run.sqlite")
    for k, v in fields.items():
        db.execute(f"UPDATE checkpoints SET {k} = ? WHERE step = ?", (v, step))
    db.commit()
    db.close()


def newest(path: Path) -> checkpoint.Loaded | None:
    run = Run.open(path)
    try:
        return checkpoint.newest_valid(run, say=lambda m: None)
    finally:
        run.close()


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and ": " in msg, msg
    return msg


# ── 1. checkpoint paths recorded in run.sqlite ───────────────────────────────
@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_checkpoint_path_leading_outside_is_corrupt_and_nothing_outside_is_renamed(run_copy, tmp_path, how):
    outside = tmp_path / "outside"
    outside.mkdir()
    for f in (run_copy / "checkpoints").glob("step-000040.*"):  # a perfect copy, so only the path is wrong
        shutil.copy(f, outside / f.name)
    recorded = {
        "absolute": str(outside / "step-000040.safetensors"),
        "dotdot": "../../outside/step-000040.safetensors",
        "symlink": "checkpoints/elsewhere/step-000040.safetensors",
    }[how]
    (run_copy / "checkpoints" / "elsewhere").symlink_to(outside)
    set_record(run_copy, 40, file=recorded)
    with pytest.raises(checkpoint.CorruptCheckpoint):
        run = Run.open(run_copy)
        checkpoint.load(run, run.checkpoints()[-1])
    loaded = newest(run_copy)
    assert loaded is not None and loaded.record.step == 30  # fell back, as for a hash mismatch
    assert sorted(p.name for p in outside.iterdir()) == ["step-000040.safetensors", "step-000040.state.pt"]
    assert (run_copy / "checkpoints" / "step-000040.safetensors.corrupt").is_file()  # set aside inside checkpoints/


def test_inside_refuses_every_escape(tmp_path):
    (tmp_path / "link").symlink_to("/")
    for bad in ("/etc/passwd", "../x", "a/../../x", "link/etc/passwd", "", ".", "a\x00b", 5, b"x"):
        with pytest.raises(contained.Unsafe):
            contained.inside(tmp_path, bad)
    assert contained.inside(tmp_path, "checkpoints/step-000001.safetensors") == tmp_path / "checkpoints" / "step-000001.safetensors"


# ── 2. the run lock ──────────────────────────────────────────────────────────
def test_lock_is_never_written_through_a_symlink(run_copy, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (run_copy / "run.lock").symlink_to(precious)
    with pytest.raises(SeedbedError) as err:
        RunLock(run_copy).acquire()
    assert "symbolic link" in one_line(err)
    assert precious.read_text() == "keep me"


def test_two_acquirers_at_once_exactly_one_wins(run_copy):
    for _ in range(50):
        barrier, won, lost = threading.Barrier(2), [], []

        def take(barrier=barrier, won=won, lost=lost):
            lock = RunLock(run_copy)
            barrier.wait()
            try:
                lock.acquire()
                won.append(lock)
            except SeedbedError as err:
                lost.append(str(err))

        threads = [threading.Thread(target=take) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(lost) == 1, (won, lost)
        assert "is being grown by" in lost[0]
        won[0].release()
    assert not (run_copy / "run.lock").exists()


def test_lock_held_by_another_process_then_freed_by_its_death(run_copy):
    code = "import sys; from seedbed.run import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code, str(run_copy)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert RunLock(run_copy).holder() == child.pid
        db = sqlite3.connect(run_copy / "run.sqlite")  # a run whose last life event is a start: growing or crashed
        db.execute("DELETE FROM events WHERE kind = 'done'")
        db.commit()
        db.close()
        assert Run.open(run_copy, readonly=True).status() == "growing"
        with pytest.raises(SeedbedError, match=f"process {child.pid}"):
            RunLock(run_copy).acquire()
    finally:
        child.kill()
        child.wait()
    assert RunLock(run_copy).holder() is None
    assert Run.open(run_copy, readonly=True).status() == "crashed"
    lock = RunLock(run_copy)
    lock.acquire()
    lock.release()


# ── 3. links where the run's own files and folders should be ─────────────────
def test_linked_checkpoints_folder_is_refused_and_its_target_untouched(run_copy, tmp_path):
    target = tmp_path / "target"
    shutil.move(run_copy / "checkpoints", target)
    (target / "someone-elses.tmp").write_text("not yours")
    (run_copy / "checkpoints").symlink_to(target)
    with pytest.raises(SeedbedError) as err:
        grow(resume=run_copy, progress=False)
    assert "symbolic link" in one_line(err)
    assert (target / "someone-elses.tmp").read_text() == "not yours"


@pytest.mark.parametrize("name", ["run.sqlite", "conditions.toml"])
def test_linked_index_or_conditions_is_refused(run_copy, tmp_path, name):
    shutil.move(run_copy / name, tmp_path / name)
    (run_copy / name).symlink_to(tmp_path / name)
    with pytest.raises(SeedbedError) as err:
        Run.open(run_copy, readonly=True)
    assert "symbolic link" in one_line(err)


def test_remove_partial_writes_stays_inside_checkpoints(run_copy, tmp_path):
    outside = tmp_path / "outside.tmp"
    outside.write_text("not yours")
    ckpts = run_copy / "checkpoints"
    (ckpts / "step-000050.safetensors.abc.tmp").write_bytes(b"half")
    (ckpts / "link.tmp").symlink_to(outside)
    run = Run.open(run_copy)
    run.remove_partial_writes()
    assert not list(ckpts.glob("*.tmp")) and outside.read_text() == "not yours"
    assert (ckpts / "step-000040.safetensors").is_file()
    shutil.move(ckpts, tmp_path / "moved")
    ckpts.symlink_to(tmp_path / "moved")
    (tmp_path / "moved" / "x.tmp").write_text("not yours")
    with pytest.raises(contained.Unsafe):
        run.remove_partial_writes()
    assert (tmp_path / "moved" / "x.tmp").exists()


# ── 4. a FIFO or /dev/zero where a checkpoint should be ──────────────────────
def _in_thread(fn, timeout: float = 120):
    """Run `fn` in a daemon thread; a hang fails the test instead of the suite."""
    out: list = []

    def call():
        try:
            out.append(fn())
        except Exception as err:  # noqa: BLE001 — handed back to the test
            out.append(err)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "hung"
    return out[0]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge"])
def test_checkpoint_that_is_a_fifo_or_endless_is_corrupt_without_reading_it(run_copy, kind):
    weights = run_copy / LAST
    weights.unlink()
    if kind == "fifo":
        os.mkfifo(weights)
    elif kind == "dev-zero":
        weights.symlink_to("/dev/zero")
    else:  # a sparse file far larger than memory could hold
        with open(weights, "wb") as f:
            f.truncate(checkpoint.max_checkpoint_bytes() + 1)
    loaded = _in_thread(lambda: newest(run_copy))
    assert loaded is not None and loaded.record.step == 30


def test_open_regular_refuses_links_fifos_and_big_files(tmp_path):
    (tmp_path / "f").write_bytes(b"12345")
    assert contained.open_regular(tmp_path / "f", 5) == b"12345"
    with pytest.raises(contained.Unsafe, match="GiB"):
        contained.open_regular(tmp_path / "f", 4)
    (tmp_path / "l").symlink_to(tmp_path / "f")
    with pytest.raises(contained.Unsafe, match="symbolic link"):
        contained.open_regular(tmp_path / "l", 100)
    os.mkfifo(tmp_path / "p")
    err = _in_thread(lambda: contained.open_regular(tmp_path / "p", 100))
    assert isinstance(err, contained.Unsafe) and "not a regular file" in str(err)


# ── 5. undecodable files whose hashes were made consistent ───────────────────
def vouch(path: Path, step: int, state: bytes | None = None, weights: bytes | None = None) -> None:
    """Replace a checkpoint's state and/or weights and make every recorded hash agree, as an attacker would."""
    stem = path / "checkpoints" / f"step-{step:06d}"
    if state is not None:
        (stem.with_suffix(".state.pt")).write_bytes(state)
        tensors = st_load((stem.with_suffix(".safetensors")).read_bytes())
        meta = {"step": str(step), "tokens_seen": "0", "state_sha256": hashlib.sha256(state).hexdigest()}
        weights = st_save(tensors, metadata=meta)
    assert weights is not None
    (stem.with_suffix(".safetensors")).write_bytes(weights)
    set_record(path, step, sha256=hashlib.sha256(weights).hexdigest())


class Poison:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("what", ["poisoned-state", "garbage-state", "not-a-state", "garbage-weights"])
def test_undecodable_checkpoint_is_corrupt_and_resume_falls_back(run_copy, what):
    if what == "poisoned-state":
        vouch(run_copy, 40, state=_torch_bytes({"step": 40, "x": Poison()}))
    elif what == "garbage-state":
        vouch(run_copy, 40, state=b"PK\x03\x04 not really a zip")
    elif what == "not-a-state":
        vouch(run_copy, 40, state=_torch_bytes([1, 2, 3]))
    else:
        vouch(run_copy, 40, weights=b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    run = Run.open(run_copy)
    with pytest.raises(checkpoint.CorruptCheckpoint) as err:
        checkpoint.load(run, run.checkpoints()[-1])
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    said: list[str] = []
    loaded = checkpoint.newest_valid(run, say=said.append)
    assert loaded is not None and loaded.record.step == 30 and "step 40 is corrupt" in said[0]


def test_resume_past_a_poisoned_state_regrows_the_same(run_copy, grown, capsys):
    vouch(run_copy, 40, state=_torch_bytes({"step": 40, "x": Poison()}))
    grow(resume=run_copy, progress=False)
    assert "step 40 is corrupt" in capsys.readouterr().out
    a, b = (st_load((p / LAST).read_bytes()) for p in (run_copy, grown))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ── 6. names ─────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("name", ["tiny\n", "a\nb", ".hidden", "a/b", ""])
def test_bad_run_names_are_refused(tmp_path, name):
    with pytest.raises(SeedbedError, match="not allowed"):
        Run.check_new(tmp_path, name)


# ── 7. a write cut short by kill -9 ──────────────────────────────────────────
WRITER = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode=DELETE")
db.execute("PRAGMA cache_size=1")  # pages spill into the file before commit: the journal is hot
db.executemany("INSERT INTO metrics VALUES (?, ?, ?)", [(i, "train/" + "x" * 200, 1.0) for i in range(20000)])
os.kill(os.getpid(), 9)
"""


def test_hot_journal_after_kill_9_is_rolled_back_by_a_read(run_copy):
    before = Run.open(run_copy, readonly=True).metric("train/loss")
    proc = subprocess.run([sys.executable, "-c", WRITER, str(run_copy / "run.sqlite")], check=False)
    assert proc.returncode == -signal.SIGKILL
    journal = run_copy / "run.sqlite-journal"
    assert journal.is_file() and journal.stat().st_size > 0  # the situation under test
    run = Run.open(run_copy, readonly=True)
    assert run.metric("train/loss") == before and run.status() == "done"
    assert not journal.exists()


# ── 8. a full disk ───────────────────────────────────────────────────────────
class FullDisk:
    """A connection whose every write fails as SQLite does on a full disk."""

    def __init__(self, db):
        self.db = db

    def _full(self, *args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    execute = executemany = executescript = commit = _full

    def close(self):
        self.db.close()


@pytest.mark.parametrize(
    "write",
    [
        lambda r: r.log_metrics(1, {"a": 1.0}),
        lambda r: r.commit(),
        lambda r: r.log_event(1, "x", "y"),
        lambda r: r.record_checkpoint(checkpoint.CheckpointRecord(1, "checkpoints/x", "0", 0)),
    ],
)
def test_full_disk_in_the_index_is_one_line_with_the_free_space(run_copy, write):
    run = Run.open(run_copy)
    run.db = FullDisk(run.db)
    with pytest.raises(SeedbedError) as err:
        write(run)
    msg = one_line(err)
    assert "run.sqlite" in msg and "free" in msg and ("GiB" in msg or "MiB" in msg)


def test_full_disk_creating_the_index_is_one_line(run_copy, monkeypatch):
    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: FullDisk(real(*a, **k)))
    with pytest.raises(SeedbedError) as err:
        Run(run_copy)
    assert "run.sqlite" in one_line(err) and "free" in str(err.value)


@pytest.mark.parametrize("where", [(os, "fsync"), (tempfile, "mkstemp")])
def test_full_disk_in_write_atomic_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, where):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(*where, full)
    target = tmp_path / "big.bin"
    with pytest.raises(SeedbedError) as err:
        write_atomic(target, b"x" * (1 << 20))
    monkeypatch.undo()
    msg = one_line(err)
    assert str(target) in msg and "1.0 MiB needed" in msg and "free" in msg
    assert list(tmp_path.iterdir()) == []


# ── 9. a run that died before its first checkpoint; atomic creation ──────────
DIE_AFTER_START = """
import os, sys
sys.path.insert(0, sys.argv[2])
from conftest import tiny
from seedbed.run import Run, RunLock
run = Run.create(sys.argv[1], "tiny", tiny(), {})
run.hold_lock()
run.log_event(0, "start", "growing tiny")
os.kill(os.getpid(), 9)  # before the step-0 checkpoint
"""


def test_run_killed_before_its_step_0_checkpoint_can_start_again(runs):
    proc = subprocess.run([sys.executable, "-c", DIE_AFTER_START, str(runs), str(Path(__file__).parent)], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert Run.open(runs / "tiny", readonly=True).status() == "crashed"
    run = grow(tiny(), runs_dir=runs, progress=False)
    assert run.status() == "done" and run.steps_done() == 40
    assert sorted(p.name for p in runs.iterdir()) == ["tiny"]  # no hidden leftovers


def _dead_run(runs: Path) -> Path:
    run = Run.create(runs, "tiny", tiny(), {})
    run.log_event(0, "start", "started")
    run.close()
    return run.path


def test_only_an_empty_dead_run_is_reclaimed(runs, tmp_path):
    path = _dead_run(runs)
    assert Run.check_new(runs, "tiny") == path
    (path / "notes.txt").write_text("mine")  # something a person put there: not ours to delete
    with pytest.raises(SeedbedError, match="already exists"):
        Run.create(runs, "tiny", tiny(), {})
    (path / "notes.txt").unlink()
    lock = RunLock(path)  # somebody is growing it
    lock.acquire()
    with pytest.raises(SeedbedError):
        Run.create(runs, "tiny", tiny(), {})
    lock.release()
    run = Run.open(path)
    run.record_checkpoint(checkpoint.CheckpointRecord(0, "checkpoints/step-000000.safetensors", "0", 0))
    run.close()
    with pytest.raises(SeedbedError, match="already exists"):
        Run.check_new(runs, "tiny")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SeedbedError, match="already exists"):
        Run.check_new(tmp_path, "plain")


def test_failed_create_leaves_no_folder(runs):
    with pytest.raises(TypeError):
        Run.create(runs, "tiny", tiny(), {"tokenizer": object()})  # cannot be written as JSON
    assert list(runs.iterdir()) == []


def test_a_new_run_is_never_taken_for_a_dead_one(runs):
    run = Run.create(runs, "tiny", tiny(), {})  # created, not yet growing: its lock is already held
    with pytest.raises(SeedbedError, match="already exists"):
        Run.check_new(runs, "tiny")
    run.hold_lock()  # the grower: the creator's lock is already its own
    assert RunLock(run.path).holder() == os.getpid()
    with pytest.raises(SeedbedError, match="being grown"):
        RunLock(run.path).acquire()  # anyone else, this process included, is refused
    run.close()
    assert RunLock(run.path).holder() is None


# ── 10. malformed trial.json ─────────────────────────────────────────────────
DONE = '"finished": "2025-01-01T00:00:00+00:00", "scale": "tiny", "seed": 0'
BAD_JSON = ["not json", "[1, 2]"]
BAD_LISTING = [  # what `seedbed trials` reads
    '{"trial": "induction", "verdict": 5, ' + DONE + "}",
    '{"trial": "induction", "verdict": "held", "finished": [], "scale": "tiny", "seed": 0}',
    '{"trial": null, "verdict": "held", ' + DONE + "}",
    '{"trial": "induction", "verdict": "held", "finished": "2025-01-01T00:00:00+00:00", "scale": "tiny", "seed": "0"}',
]
BAD_PAGE = [  # what `seedbed report` reads besides
    '{"trial": "induction", "verdict": "held", ' + DONE + ', "evidence": [1]}',
    '{"trial": "induction", "verdict": "held", ' + DONE + ', "events": [[1]]}',
    '{"trial": "induction", "verdict": "held", ' + DONE + ', "figures": 5}',
    '{"trial": "induction", "verdict": 5, ' + DONE + "}",
]


def trial_folders(tmp_path: Path) -> Path:
    """A runs folder of malformed trial.json files (and a FIFO), with one good one."""
    runs = tmp_path / "runs"
    for i, text in enumerate(BAD_JSON + BAD_LISTING):
        (runs / f"bad{i}").mkdir(parents=True)
        (runs / f"bad{i}" / "trial.json").write_text(text)
    good = {"trial": "grokking", "verdict": "held", "finished": "2025-01-01T00:00:00+00:00", "scale": "tiny", "seed": 0}
    (runs / "good").mkdir()
    (runs / "good" / "trial.json").write_text(json.dumps(good))
    os.mkfifo(runs / "bad0" / "fifo")
    (runs / "fifo").mkdir()
    os.mkfifo(runs / "fifo" / "trial.json")
    return runs


def test_malformed_trial_json_is_skipped_by_trials(tmp_path):
    found = _in_thread(lambda: last_verdicts(trial_folders(tmp_path)))
    assert set(found) == {"grokking"}


@pytest.mark.slow
def test_malformed_trial_json_is_skipped_by_trials_through_the_cli(tmp_path):
    runs = trial_folders(tmp_path)
    proc = cli("trials", str(runs), cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "held (tiny, seed 0)" in proc.stdout


@pytest.mark.parametrize("text", BAD_JSON + BAD_PAGE)
def test_malformed_trial_json_is_one_line_in_report(tmp_path, text):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "trial.json").write_text(text)
    with pytest.raises(SeedbedError) as err:
        read_result(tmp_path / "bad")
    assert "trial.json" in one_line(err)


@pytest.mark.slow
def test_malformed_trial_json_is_one_line_through_the_cli(tmp_path):
    for i, text in enumerate(BAD_PAGE):
        (tmp_path / f"bad{i}").mkdir()
        (tmp_path / f"bad{i}" / "trial.json").write_text(text)
        proc = cli("report", f"bad{i}", cwd=tmp_path, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "trial.json" in lines[0], proc.stderr


# ── 11. diverged ─────────────────────────────────────────────────────────────
def test_status_reports_a_diverged_run(runs):
    run = Run.create(runs, "tiny", tiny(), {})
    run.log_event(0, "start", "started")
    run.log_event(7, "diverged", "loss became nan at step 7")
    assert run.status() == "diverged"
    run.log_event(5, "resume", "resumed from step 5")
    assert run.status() == "growing"  # this process still holds the creator's lock
    run.close()


def test_conditions_edited_after_growth_are_one_line_for_read_export_and_resume(runs, tmp_path):
    grow(tiny(schedule={"steps": 2}), runs_dir=runs, name="edited", progress=False)
    path = runs / "edited"
    toml = (path / "conditions.toml").read_text()
    (path / "conditions.toml").write_text(toml.replace("d_model = 16", "d_model = 32"))
    for args in (("read", str(path)), ("export", str(path), str(tmp_path / "exports" / "x")), ("grow", "--resume", str(path))):
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert "conditions.toml" in r.stderr, r.stderr
