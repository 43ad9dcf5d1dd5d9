"""seedbed.read.load: any checkpoint, with its soil, from a run folder that may have moved."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny, tiny_dict

from seedbed import checkpoint
from seedbed.conditions import parse
from seedbed.errors import SeedbedError
from seedbed.grow import grow
from seedbed.read import checkpoint_steps, load
from seedbed.run import Run


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
    with pytest.raises(SeedbedError, match="neither a run folder .* nor a Hugging Face model folder"):
        load(tmp_path)


def _text_run(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    data = tiny_dict(schedule={"steps": 2})
    data["soil"] = {"kind": "text", "paths": [str(corpus)]}
    grow(parse(data), runs_dir=tmp_path / "runs", name="text", progress=False)
    return tmp_path / "runs" / "text"


def test_a_run_folders_text_paths_are_never_followed_unless_asked(tmp_path: Path, monkeypatch) -> None:
    """Crafted conditions (a whole tree, a FIFO) cost nothing: reading uses the saved tokenizer."""
    import os
    import tomllib

    import tomli_w

    from seedbed.read.summary import draw_patterns, pictured_heads, read_heads
    from seedbed.soil.text import TextSoil

    run = _text_run(tmp_path)
    assert load(run, corpus=True).soil is not None  # asked for, the corpus is read
    os.mkfifo(tmp_path / "pipe")
    data = tomllib.loads((run / "conditions.toml").read_text())
    data["soil"]["paths"] = ["/usr/share", str(tmp_path / "pipe")]
    (run / "conditions.toml").write_text(tomli_w.dumps(data))

    def no_corpus(*args, **kwargs):
        raise AssertionError("reading a run must not read the corpus its conditions name")

    monkeypatch.setattr(TextSoil, "__init__", no_corpus)
    g = load(run)
    assert g.soil is None and g.decode(g.tokenizer.encode("lazy fox")) == "lazy fox"
    reading = read_heads(g)  # what `seedbed read` does, with no soil
    assert draw_patterns(g, pictured_heads(reading, limit=1), tmp_path / "pictures")


@pytest.mark.parametrize("saved", ["char", {"kind": 5}, {"kind": "char", "vocab": ["ab", "c"]}, {"kind": "char", "vocab": 7}])
def test_a_malformed_saved_tokenizer_is_a_one_line_error(tmp_path: Path, saved) -> None:
    import json

    run = _text_run(tmp_path)
    artifacts = json.loads((run / "artifacts.json").read_text())
    (run / "artifacts.json").write_text(json.dumps({**artifacts, "tokenizer": saved}))
    with pytest.raises(SeedbedError) as e:
        load(run)
    assert "artifacts.json: the saved tokenizer cannot be read" in str(e.value) and "\n" not in str(e.value)
