"""Growing from a parent (issue 13 §1): [init] from / step / keep_optimizer, [train] only / freeze, lineage."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli, tiny_dict, write_toml
from safetensors.torch import load as st_load

from seedbed import checkpoint
from seedbed.conditions import Train, parse
from seedbed.errors import SeedbedError
from seedbed.grow import choose_trained, grow, train_only
from seedbed.hooks import hooks
from seedbed.model import Transformer
from seedbed.run import ParentRecord, Run
from seedbed.soil import resolve

ARCH = {"attn_only": False}  # blocks with attention, MLP and LayerNorms: every kind of parameter


def child_dict(parent: Path | str, name: str = "child", init: dict | None = None, **over) -> dict:
    return tiny_dict(name=name, architecture=ARCH, **over) | {"init": {"from": str(parent), **(init or {})}}


def weights_at(run_path: Path, step: int) -> dict[str, torch.Tensor]:
    return st_load((run_path / "checkpoints" / f"step-{step:06d}.safetensors").read_bytes())


def folder_digest(path: Path) -> dict[str, str]:
    """Every file under `path` and its sha256: a parent must come out of any child's start untouched."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A tiny run (checkpoints 0, 1, 2, 4, 8, 10, 20, 30, 40), grown once; tests that change it work on copies."""
    runs = tmp_path_factory.mktemp("parent")
    return grow(parse(tiny_dict(name="parent", architecture=ARCH)), runs_dir=runs, progress=False).path


@pytest.fixture
def parent_copy(parent, tmp_path) -> Path:
    dst = tmp_path / "runs" / "parent"
    shutil.copytree(parent, dst)
    return dst


# ── [init]: the child starts from the parent's verified weights ─────────────
def test_a_child_starts_from_the_parents_checkpoint_and_records_it(parent, runs):
    child = grow(parse(child_dict(parent, init={"step": 20})), runs_dir=runs, progress=False)
    assert [r.step for r in child.checkpoints()] == [0, 1, 2, 4, 8, 10, 20, 30, 40]  # its own steps, from 0
    start, theirs = weights_at(child.path, 0), weights_at(parent, 20)
    assert start.keys() == theirs.keys() and all(torch.equal(start[k], theirs[k]) for k in start)
    assert not torch.equal(weights_at(child.path, 40)["embed.weight"], theirs["embed.weight"])  # and it grew
    recorded = next(r for r in Run.open(parent, readonly=True).checkpoints() if r.step == 20)
    saved = Run.open(child.path, readonly=True)
    assert saved.conditions.init.step == 20 and saved.conditions.init.sha256 == recorded.sha256
    assert saved.conditions.init.from_ == str(parent)
    assert 'from = "' in (child.path / "conditions.toml").read_text()  # TOML's key, not Python's from_
    assert saved.parent() == ParentRecord(str(parent), 20, recorded.sha256)
    assert saved.events()[0][2].startswith(f"growing child from {parent}@20: ")


def test_the_default_step_is_the_newest_checkpoint_that_verifies_and_the_parent_is_untouched(parent_copy, tmp_path):
    newest = parent_copy / "checkpoints" / "step-000040.safetensors"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    before = folder_digest(parent_copy)
    child = grow(parse(child_dict(parent_copy)), runs_dir=tmp_path / "children", progress=False)
    assert folder_digest(parent_copy) == before  # nothing set aside or rewritten in someone else's folder
    assert child.conditions.init.step == 30
    assert ("parent-checkpoint-skipped" in [k for _, k, _ in child.events()])
    start, theirs = weights_at(child.path, 0), weights_at(parent_copy, 30)
    assert all(torch.equal(start[k], theirs[k]) for k in start)


def test_a_child_is_deterministic_and_differs_from_a_seedling(parent, tmp_path):
    data = child_dict(parent, train={"freeze": ["blocks.0.*"]})
    a = grow(parse(data), runs_dir=tmp_path / "a", progress=False)
    b = grow(parse(data), runs_dir=tmp_path / "b", progress=False)
    wa, wb = weights_at(a.path, 40), weights_at(b.path, 40)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    plain = grow(parse(tiny_dict(name="child", architecture=ARCH)), runs_dir=tmp_path / "c", progress=False)
    assert not torch.equal(weights_at(plain.path, 40)["embed.weight"], wa["embed.weight"])


def test_keep_optimizer_continues_the_parents_moments_by_name(parent, tmp_path):
    fresh = grow(parse(child_dict(parent, train={"only": ["unembed"]})), runs_dir=tmp_path / "fresh", progress=False)
    kept = grow(parse(child_dict(parent, init={"keep_optimizer": True}, train={"only": ["unembed"]})),
                runs_dir=tmp_path / "kept", progress=False)
    reader = Run.open(parent, readonly=True)
    theirs = checkpoint.load(reader, reader.checkpoints()[-1]).state["optimizer"]["state"]
    arch = resolve(parse(child_dict(parent)))[0].architecture
    names = [n for n, p in Transformer(arch).named_parameters() if p.dim() >= 2]
    their_unembed = theirs[names.index("unembed.weight")]  # the parent's matrices come first, in model order
    for run, expect_kept in ((kept, True), (fresh, False)):
        r = Run.open(run.path, readonly=True)
        mine = checkpoint.load(r, r.checkpoints()[0]).state["optimizer"]
        assert [len(g["params"]) for g in mine["param_groups"]] == [1, 0]  # unembed only: one matrix, no vectors
        if expect_kept:
            assert torch.equal(mine["state"][0]["exp_avg"], their_unembed["exp_avg"])
            assert float(mine["state"][0]["step"]) == float(their_unembed["step"])
        else:
            assert mine["state"] == {}
    assert not torch.equal(weights_at(kept.path, 40)["unembed.weight"], weights_at(fresh.path, 40)["unembed.weight"])


# ── [train]: only / freeze ────────────────────────────────────────────────────
def test_patterns_select_by_the_models_own_names():
    cond, _ = resolve(parse(tiny_dict(architecture={**ARCH, "tied_embeddings": False})))
    model = Transformer(cond.architecture)
    name_of = {id(p): n for n, p in model.named_parameters()}

    def chosen(**train) -> list[str]:
        return [name_of[id(p)] for p in choose_trained(model, Train(**train))]

    assert chosen(only=["unembed"]) == ["unembed.weight"]
    assert chosen(only=["embed"]) == ["embed.weight"]  # not pos_embed: a pattern matches a whole name or module path
    assert chosen(only=["blocks.*.attn"]) == [f"blocks.{i}.attn.{w}.{k}" for i in (0, 1) for w in ("qkv", "out") for k in ("weight", "bias")]
    assert all(n.startswith("blocks.1.") for n in chosen(only=["blocks.1.*"])) and len(chosen(only=["blocks.1.*"])) == 12
    assert chosen(only=["blocks.*"], freeze=["blocks.0.*", "*.mlp", "*.ln?"]) == [
        "blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.bias", "blocks.1.attn.out.weight", "blocks.1.attn.out.bias"]
    assert len(chosen()) == len(list(model.parameters()))
    with pytest.raises(SeedbedError, match=r"train.only: 'blocks.*.atn' matches no parameter of this model: .*blocks.N.attn"):
        chosen(only=["blocks.*.atn"])
    with pytest.raises(SeedbedError, match="leaves no parameter to train"):
        chosen(only=["unembed"], freeze=["unembed"])
    tied, _ = resolve(parse(tiny_dict(architecture={"tied_embeddings": True})))
    tied_model = Transformer(tied.architecture)
    assert [p is tied_model.embed.weight for p in choose_trained(tied_model, Train(only=["unembed"]))] == [True]


def test_only_unembed_keeps_the_body_out_of_autograd():
    """Frozen parameters are leaves that need no gradient, so backward never goes through the body."""
    cond, soil = resolve(parse(tiny_dict(architecture=ARCH)))
    model = Transformer(cond.architecture)
    train_only(model, Train(only=["unembed"]))
    seen = {}

    def keep(x, hook):
        seen["resid"] = x

    with hooks(model, [("ln_final.hook_normalized", keep)]):
        model(soil.train_batch(0, 4).inputs).sum().backward()
    assert not seen["resid"].requires_grad  # the body's output carries no graph: nothing to differentiate through
    assert model.unembed.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("unembed"))


@pytest.mark.parametrize("train", [{"only": ["unembed"]}, {"freeze": ["blocks.*.attn", "embed"]}])
def test_frozen_parameters_are_bit_identical_at_the_end(parent, runs, train):
    cond = parse(child_dict(parent, train=train))
    child = grow(cond, runs_dir=runs, progress=False)
    start, end = weights_at(child.path, 0), weights_at(child.path, 40)
    model = Transformer(resolve(cond)[0].architecture)
    name_of = {id(p): n for n, p in model.named_parameters()}
    frozen = set(start) - {name_of[id(p)] for p in choose_trained(model, Train(**train))}
    assert len(frozen) >= 3 and all(torch.equal(start[n], end[n]) for n in frozen), [n for n in frozen if not torch.equal(start[n], end[n])]
    assert all(not torch.equal(start[n], end[n]) for n in set(start) - frozen)  # the rest did train
    assert "parameters training" in child.events()[0][2]


def test_a_child_resumes_without_its_parent_and_ends_bit_identical(parent_copy, tmp_path):
    data = child_dict(parent_copy, train={"only": ["unembed", "blocks.1.*"]})
    reference = grow(parse(data), runs_dir=tmp_path / "ref", progress=False)

    def crash(model, step):  # a crash at step 25's observation: the newest checkpoint is step 20
        if step == 25:
            raise RuntimeError("the machine went away")
        return {}

    with pytest.raises(RuntimeError):
        grow(parse(data), runs_dir=tmp_path / "victim", progress=False, observers=[crash], observe_every=5)
    victim = tmp_path / "victim" / "child"
    assert Run.open(victim, readonly=True).steps_done() == 20
    shutil.rmtree(parent_copy)  # a child's checkpoints are its own: resuming never reads the parent
    grow(resume=victim, progress=False)
    wa, wb = weights_at(victim, 40), weights_at(reference.path, 40)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ── bad input: one line, exit 2, nothing written ─────────────────────────────
def one_line_refusal(tmp_path: Path, data: dict, *words: str) -> None:
    """`seedbed grow child.toml` fails with one line holding `words`; runs/ is exactly as it was (no child, parent untouched)."""
    runs = tmp_path / "runs"
    listing = lambda: sorted(p.name for p in runs.iterdir()) if runs.exists() else []  # hidden folders too
    before = (listing(), folder_digest(runs) if runs.exists() else {})
    proc = cli("grow", str(write_toml(tmp_path / "child.toml", data)), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert (listing(), folder_digest(runs) if runs.exists() else {}) == before


def test_a_from_that_is_not_a_run_is_refused(tmp_path):
    (tmp_path / "runs" / "nothing").mkdir(parents=True)
    one_line_refusal(tmp_path, child_dict("runs/nothing"), '[init] from = "runs/nothing"', "not a run folder")
    shutil.rmtree(tmp_path / "runs")
    one_line_refusal(tmp_path, child_dict("runs/missing"), "not a run folder")


@pytest.mark.parametrize("case", ["no checkpoint", "architecture", "vocabulary", "sha256", "corrupt", "only"])
def test_bad_parents_and_patterns_are_one_line_and_write_nothing(parent_copy, case):
    tmp_path = parent_copy.parent.parent
    data = child_dict("runs/parent")
    if case == "no checkpoint":
        data["init"]["step"] = 15
        words = ["no checkpoint at step 15", "0, 1, 2, 4, 8, 10, 20, 30, 40"]
    elif case == "architecture":
        data["architecture"]["d_model"] = 32
        words = ["architecture.d_model is 32 here but 16 in the parent", "runs/parent/conditions.toml"]
    elif case == "vocabulary":
        data["soil"]["vocab_size"] = 20
        words = ["architecture.d_vocab is 20 here but 16 in the parent (it comes from the soil's vocabulary)"]
    elif case == "sha256":
        data["init"].update(step=20, sha256="0" * 64)
        words = ["checkpoint at step 20 has sha256", "the parent changed since"]
    elif case == "corrupt":
        target = parent_copy / "checkpoints" / "step-000020.safetensors"
        raw = bytearray(target.read_bytes())
        raw[-5] ^= 0xFF
        target.write_bytes(bytes(raw))
        data["init"]["step"] = 20
        words = ["checkpoint at step 20 cannot be trusted", "does not match its recorded sha256"]
    else:
        data["train"] = {"only": ["unembed", "blocks.*.mlpp"]}
        words = ["train.only: 'blocks.*.mlpp' matches no parameter"]
    one_line_refusal(tmp_path, data, *words)


# ── the command line ──────────────────────────────────────────────────────────
def test_seedbed_grow_a_child_and_runs_shows_its_parent(parent_copy):
    tmp_path = parent_copy.parent.parent
    cond = write_toml(tmp_path / "child.toml", child_dict("runs/parent", init={"step": 30}, train={"only": ["unembed"]}))
    grown = cli("grow", str(cond), "--no-progress", cwd=tmp_path)
    assert grown.returncode == 0, grown.stderr
    assert "grew child" in grown.stdout
    listed = cli("runs", cwd=tmp_path)
    row = next(line for line in listed.stdout.splitlines() if line.strip().startswith("child"))
    assert "from runs/parent@30" in row and "done" in row, listed.stdout
    parent_row = next(line for line in listed.stdout.splitlines() if line.strip().startswith("parent "))
    assert "from " not in parent_row
    # its saved conditions grow it again (step and sha256 filled in, checked against the parent)
    again = cli("grow", "runs/child/conditions.toml", "--name", "again", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    wa, wb = weights_at(tmp_path / "runs" / "child", 40), weights_at(tmp_path / "runs" / "again", 40)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_data_parallel_child_matches_one_process_and_keeps_frozen_weights(parent_copy):
    tmp_path = parent_copy.parent.parent
    data = child_dict("runs/parent", name="dp", train={"freeze": ["blocks.0.*"]}, schedule={"steps": 20, "eval_every": 10})
    cond = write_toml(tmp_path / "dp.toml", data)
    one = cli("grow", str(cond), "--runs-dir", "one", "--no-progress", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "seedbed", "grow", str(cond), "--runs-dir", "two", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    wa, wb = weights_at(tmp_path / "one" / "dp", 20), weights_at(tmp_path / "two" / "dp", 20)
    start = weights_at(tmp_path / "two" / "dp", 0)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
        if k.startswith("blocks.0."):
            assert torch.equal(wb[k], start[k]), k
    assert Run.open(tmp_path / "two" / "dp", readonly=True).parent().step == 40
