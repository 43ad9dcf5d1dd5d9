"""A run whose loss or gradients stop being finite stops at once, saves the weights before, and says why in one line."""

import math
import os
import re
import subprocess
import sys

import pytest
import torch

from seedbed import checkpoint
from seedbed.errors import SeedbedError
from seedbed.grow import grow
from seedbed.run import Run

from conftest import cli, tiny, tiny_dict, write_toml

DIVERGED = re.compile(r"run '.*' diverged at step (\d+): the (loss|gradient norm) became (NaN|infinite) \(optimizer\.lr=100 ")


def null_metrics(run: Run) -> int:
    return run.db.execute("SELECT COUNT(*) FROM metrics WHERE value IS NULL").fetchone()[0]


def test_a_diverging_run_stops_saves_the_weights_before_and_says_why(runs):
    with pytest.raises(SeedbedError) as err:
        grow(tiny(optimizer={"lr": 100.0}), runs_dir=runs, progress=False)
    message = str(err.value)
    found = DIVERGED.match(message)
    assert found and "\n" not in message, message
    step = int(found[1])
    assert f"the weights up to step {step - 1} are saved" in message and "lower optimizer.lr" in message

    run = Run.open(runs / "tiny", readonly=True)
    assert [(s, kind) for s, kind, _ in run.events()][-1] == (step, "diverged")
    newest = run.checkpoints()[-1]
    assert newest.step == step - 1  # the last good weights, before the step that went bad
    loaded = checkpoint.load(run, newest)  # verifies both hashes
    assert loaded.state["step"] == step - 1
    assert all(torch.isfinite(t).all() for t in loaded.weights.values())
    assert [s for s, _ in run.metric("train/loss")] == list(range(1, step))  # the bad step's loss is not logged
    assert null_metrics(run) == 0


@pytest.mark.slow
def test_a_diverging_run_through_the_cli_is_one_line_and_exit_2(tmp_path):
    write_toml(tmp_path / "hot.toml", tiny_dict(name="hot", optimizer={"lr": 100.0}, schedule={"warmup_steps": 0}))
    done = cli("grow", "hot.toml", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert DIVERGED.search(lines[0]) and "add schedule.warmup_steps" in lines[0], lines[0]

    resumed = cli("grow", "--resume", "runs/hot", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 2
    lines = resumed.stderr.strip().splitlines()
    assert len(lines) == 1 and "diverged at step" in lines[0] and "would diverge again" in lines[0], resumed.stderr

    listed = cli("runs", cwd=tmp_path)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr


def test_non_finite_observations_are_not_stored_as_null(runs):
    def observer(model, step):
        return {"probe/nan": math.nan, "probe/inf": math.inf, "probe/ok": 1.0}

    run = grow(tiny(), runs_dir=runs, progress=False, observers=[observer])
    assert null_metrics(run) == 0
    assert run.metric("probe/nan") == [] and run.last_metric("probe/ok") == 1.0


@pytest.mark.slow
def test_data_parallel_ranks_agree_that_the_run_diverged(tmp_path):
    write_toml(tmp_path / "hot.toml", tiny_dict(name="hot", optimizer={"lr": 100.0}, architecture={"attn_only": False}))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "seedbed", "grow", "hot.toml", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode != 0
    assert DIVERGED.search(done.stderr), done.stderr[-2000:]
    assert "SIGABRT" not in done.stderr and "terminate called" not in done.stderr, done.stderr[-2000:]
    run = Run.open(tmp_path / "runs" / "hot", readonly=True)
    step = next(s for s, kind, _ in run.events() if kind == "diverged")
    newest = run.checkpoints()[-1]
    assert newest.step == step - 1
    assert all(torch.isfinite(t).all() for t in checkpoint.load(run, newest).weights.values())


def test_read_and_runs_show_a_diverged_run_as_such(runs, tmp_path):
    with pytest.raises(SeedbedError):
        grow(tiny(optimizer={"lr": 100.0}), runs_dir=runs, progress=False)
    listed = cli("runs", str(runs), cwd=tmp_path)
    assert listed.returncode == 0 and "diverged" in listed.stdout, listed.stdout
    read = cli("read", str(runs / "tiny"), "--out", str(tmp_path / "pics"), cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    assert "this run diverged at step" in read.stdout
