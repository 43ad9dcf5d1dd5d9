"""seedbed.read.load: any checkpoint, with its soil, from a run folder that may have moved."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from seedbed import checkpoint
from seedbed.conditions import parse
from seedbed.errors import SeedbedError
from seedbed.grow import grow
from seedbed.read import checkpoint_steps, load
from seedbed.run import Run
from conftest import tiny, tiny_dict


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    grow(tiny(), runs_dir=runs, name="t", progress=False)
    return runs / "t"


def test_newest_by_default_and_same_weights_as_saved(grown: Path) -> None:
    g = load(grown)
    assert g.step == 40 and not g.model.training
    run = Run.open(grown, readonly=True)
    saved = checkpoint.load(run, run.checkpoints()[-1], with_state=False).weights
    for name, t in checkpoint.weights_of(g.model).items():
        assert torch.equal(t, saved[name]), name
    assert g.soil is not None and g.soil.name == "repeated-blocks"


def test_a_given_step_differs_from_the_newest(grown: Path) -> None:
    early, late = load(grown, step=10), load(grown, step=40)
    assert early.step == 10
    assert not torch.equal(early.model.embed.weight, late.model.embed.weight)


def test_missing_step_lists_the_steps_that_exist(grown: Path) -> None:
    with pytest.raises(SeedbedError) as e:
        load(grown, step=7)
    msg = str(e.value)
    assert "no checkpoint at step 7" in msg and "0, 1, 2, 4, 8, 10, 20, 30, 40" in msg and "\n" not in msg
    assert checkpoint_steps(grown) == [0, 1, 2, 4, 8, 10, 20, 30, 40]


def test_a_copied_run_opens_elsewhere(grown: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "moved"
    shutil.copytree(grown, copy)
    a, b = load(grown), load(copy)
    x = a.soil.eval_batch(0, 2).inputs
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))


def test_text_run_reads_without_its_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    data = tiny_dict(schedule={"steps": 4})
    data["soil"] = {"kind": "text", "paths": [str(corpus)]}
    cond = parse(data)
    grow(cond, runs_dir=tmp_path / "runs", name="text", progress=False)
    corpus.unlink()  # as if the run folder had been copied to a machine without the corpus
    g = load(tmp_path / "runs" / "text")
    assert g.soil is None and g.tokenizer is not None
    assert g.decode(g.tokenizer.encode("lazy fox")) == "lazy fox"


def test_tied_embeddings_stay_tied(tmp_path: Path) -> None:
    grow(tiny(architecture={"tied_embeddings": True}, schedule={"steps": 4}), runs_dir=tmp_path, name="tied", progress=False)
    g = load(tmp_path / "tied")
    assert g.model.unembed.weight is g.model.embed.weight
    run = Run.open(tmp_path / "tied", readonly=True)
    saved = checkpoint.load(run, run.checkpoints()[-1], with_state=False).weights
    assert torch.equal(g.model.embed.weight, saved["embed.weight"])


def test_corrupt_checkpoint_is_refused_in_one_line(grown: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bad"
    shutil.copytree(grown, copy)
    f = copy / "checkpoints" / "step-000040.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(SeedbedError, match="step 40 .* cannot be read: .*sha256"):
        load(copy)


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(SeedbedError, match="not a run folder"):
        load(tmp_path)
