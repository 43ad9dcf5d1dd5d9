"""The top-level API: seedbed.grow, seedbed.load and seedbed.trial mirror the command line; importing seedbed is cheap."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_dict, write_toml

import seedbed
from seedbed.errors import SeedbedError


def test_import_seedbed_does_not_load_torch():
    """The command line sets OpenMP's environment before torch loads, so `import seedbed` must not load it."""
    code = "import sys, seedbed; seedbed.load; seedbed.trial; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_grow_then_load(tmp_path):
    runs = tmp_path / "runs"
    path = seedbed.grow(tiny_dict(), runs_dir=runs, progress=False)
    assert path == runs / "tiny" and (path / "run.sqlite").is_file()

    g = seedbed.load(path)
    assert g.step == 40 and not g.model.training
    batch = g.soil.eval_batch(0, 2)
    assert g.model(batch.inputs).shape == (*batch.inputs.shape, g.model.cfg.d_vocab)

    early = seedbed.load(str(path), step=10)
    assert early.step == 10
    assert not torch.equal(early.model.embed.weight, g.model.embed.weight)


def test_grow_a_toml_file_is_named_as_the_command_line_names_it(tmp_path):
    data = tiny_dict(schedule={"steps": 10})
    del data["name"]
    path = seedbed.grow(write_toml(tmp_path / "mine.toml", data), runs_dir=tmp_path / "runs", progress=False)
    assert path == tmp_path / "runs" / "mine"
    assert seedbed.grow(resume=path, progress=False) == path  # already complete: nothing to do, same folder
    with pytest.raises(SeedbedError, match="already exists"):
        seedbed.grow(tmp_path / "mine.toml", runs_dir=tmp_path / "runs", progress=False)
    with pytest.raises(SeedbedError, match="no such conditions file"):
        seedbed.grow(tmp_path / "missing.toml", runs_dir=tmp_path / "runs")


def test_seedbed_grow_stays_callable_once_the_module_is_imported():
    """seedbed/grow.py is also `seedbed.grow`: importing it must not replace the API's function by a module."""
    import seedbed.grow as module
    from seedbed.grow import grow as loop

    assert seedbed.grow is module and callable(seedbed.grow)
    assert seedbed.grow.grow is loop and seedbed.grow.Interrupted is module.Interrupted


def test_trial_calls_the_trial_runner(monkeypatch, tmp_path):
    import seedbed.trials

    real = seedbed.trials.run_trial
    calls = []

    def runner(*args, **kwargs):
        inspect.signature(real).bind(*args, **kwargs)  # a call the real runner would accept
        calls.append(kwargs | {"name": args[0]})
        return str(tmp_path / "out")

    monkeypatch.setattr(seedbed.trials, "run_trial", runner)
    assert seedbed.trial("induction", scale="tiny", seed=3, out="elsewhere", progress=False) == tmp_path / "out"
    assert calls[-1]["name"] == "induction" and calls[-1]["scale"] == "tiny" and calls[-1]["seed"] == 3
    assert calls[-1]["out"] == Path("elsewhere") and calls[-1]["progress"] is False
    seedbed.trial("induction", seeds=10, seed=5)
    assert calls[-1]["seeds"] == 10 and calls[-1]["seed"] == 5
    seedbed.trial("seeds", options={"n": 3})
    assert calls[-1]["options"] == {"n": 3}


def test_trial_errors_are_one_line(tmp_path):
    with pytest.raises(SeedbedError, match="no trial named 'nope'") as err:
        seedbed.trial("nope", runs_dir=tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(SeedbedError, match="scale"):
        seedbed.trial("induction", scale="huge", runs_dir=tmp_path)
    assert not any(tmp_path.iterdir())
