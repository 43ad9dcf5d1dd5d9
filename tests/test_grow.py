import itertools
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load

from seedbed.conditions import Optimizer, Schedule
from seedbed.grow import grow, learning_rate
from seedbed.run import Run

from conftest import cli, tiny, tiny_dict, write_toml


def final_weights(run_path: Path) -> dict[str, torch.Tensor]:
    run = Run.open(run_path, readonly=True)
    rec = run.checkpoints()[-1]
    run.close()
    return load((run_path / rec.file).read_bytes())  # a copy: a later write to the file cannot change it


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def checkpoint_steps(run_path: Path) -> list[int]:
    db = sqlite3.connect(f"file:{run_path / 'run.sqlite'}?mode=ro", uri=True, timeout=5)
    try:
        return [r[0] for r in db.execute("SELECT step FROM checkpoints ORDER BY step")]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_learning_rate_warmup_then_cosine():
    o, s = Optimizer(lr=1.0), Schedule(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0, o, s) == pytest.approx(0.1)
    assert learning_rate(9, o, s) == pytest.approx(1.0)
    assert learning_rate(10, o, s) == pytest.approx(1.0)
    assert learning_rate(60, o, s) == pytest.approx(0.55)
    assert learning_rate(110, o, s) == pytest.approx(0.1)
    assert learning_rate(50, o, Schedule(steps=110, decay="constant")) == 1.0


def test_a_run_on_disk_has_everything(runs):
    run = grow(tiny(), runs_dir=runs, progress=False)
    path = runs / "tiny"
    assert (path / "conditions.toml").is_file() and (path / "artifacts.json").is_file()
    run = Run.open(path)
    assert [r.step for r in run.checkpoints()] == [0, 1, 2, 4, 8, 10, 20, 30, 40]
    assert run.checkpoints()[-1].tokens_seen == 40 * 8 * 16
    losses = run.metric("train/loss")
    assert [s for s, _ in losses] == list(range(1, 41))
    assert losses[-1][1] < losses[0][1]  # it learned something
    assert [s for s, _ in run.metric("eval/loss")] == [10, 20, 30, 40]
    assert run.status() == "done" and run.steps_done() == 40
    resolved = run.conditions
    assert resolved.architecture.d_vocab == 16 and resolved.versions["torch"] == torch.__version__
    for f in (path / "checkpoints").iterdir():
        assert f.name.startswith("step-") and not f.name.endswith(".tmp")


def test_checkpoint_metadata_is_written_in_sorted_order():
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from seedbed.checkpoint import safetensors_metadata, sorted_metadata

    tensors = {"b": torch.arange(6.0).view(2, 3), "a": torch.ones(5, dtype=torch.int64)}
    meta = {f"k{i}": str(i * 7) for i in range(12)}  # a hash map's order: sorted only by chance
    raw = st_save(tensors, metadata=meta)
    out = sorted_metadata(raw)
    assert len(out) == len(raw)
    assert list(safetensors_metadata(out)) == sorted(meta)
    assert safetensors_metadata(out) == meta
    assert all(torch.equal(st_load(out)[k], v) for k, v in tensors.items())
    assert sorted_metadata(out) == out


def test_same_conditions_same_seed_same_weights_bit_for_bit(tmp_path):
    for arch in ({"attn_only": True}, {"attn_only": False, "dropout": 0.1}):
        a = tmp_path / f"a{len(arch)}"
        b = tmp_path / f"b{len(arch)}"
        grow(tiny(architecture=arch), runs_dir=a, progress=False)
        grow(tiny(architecture=arch), runs_dir=b, progress=False)
        assert_same_weights(final_weights(a / "tiny"), final_weights(b / "tiny"))
    grow(tiny(seed=1), runs_dir=tmp_path / "c", progress=False)
    assert not torch.equal(final_weights(tmp_path / "c" / "tiny")["embed.weight"], final_weights(tmp_path / "a1" / "tiny")["embed.weight"])


@pytest.mark.parametrize(
    "over",
    [
        {"soil": {"kind": "modular-arithmetic", "p": 11, "train_fraction": 0.5}, "objective": {"loss_on": "answer"},
         "architecture": {"n_ctx": 4}},
        {"soil": {"kind": "digit-addition", "n_digits": 2}, "objective": {"loss_on": "answer"}, "architecture": {"n_ctx": 8}},
        {"objective": {"loss_on": "last"}, "precision": "bf16"},
    ],
)
def test_every_soil_and_objective_grows(runs, over):
    data = tiny_dict(**{k: v for k, v in over.items() if k != "soil"})
    if "soil" in over:
        data["soil"] = over["soil"]
    from seedbed.conditions import parse

    run = Run.open(grow(parse(data), runs_dir=runs, progress=False).path)
    assert math.isfinite(run.last_metric("eval/loss"))
    if data["soil"]["kind"] == "modular-arithmetic":
        assert run.conditions.schedule.batch_size == 60  # full batch: round(0.5 * 121)
    if data["soil"]["kind"] == "digit-addition":
        assert run.last_metric("eval/exact_match") is not None and run.last_metric("eval/digit2_loss") is not None


@pytest.mark.parametrize("which", ["safetensors", "state.pt"])
def test_corrupt_newest_checkpoint_falls_back_and_regrows_the_same(runs, capsys, which):
    grow(tiny(), runs_dir=runs, progress=False)
    path = runs / "tiny"
    good = final_weights(path)
    newest = path / "checkpoints" / f"step-000040.{which}"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    grow(resume=path, progress=False)
    out = capsys.readouterr().out
    assert "step 40 is corrupt" in out and "resuming tiny from step 30" in out
    assert (path / "checkpoints" / f"step-000040.{which}.corrupt").is_file()  # set aside, not deleted
    assert_same_weights(final_weights(path), good)
    kinds = [k for _, k, _ in Run.open(path).events()]
    assert "corrupt-checkpoint" in kinds and kinds[-1] == "done"


def test_resume_of_a_complete_run_does_nothing(runs, capsys):
    grow(tiny(), runs_dir=runs, progress=False)
    grow(resume=runs / "tiny", progress=False)
    assert "already complete" in capsys.readouterr().out


def test_checkpoint_schedule_is_asked_step_by_step_without_listing_it():
    from seedbed.conditions import Checkpoints

    for sched in (Checkpoints(), Checkpoints(log_until=8, every=10, at=[7, 33, 99]), Checkpoints(log_until=0, every=1)):
        for total in (1, 35, 64, 1000):
            assert [s for s in range(total + 1) if sched.due(s, total)] == sched.steps(total)
    huge = Checkpoints()
    assert huge.due(10**12, 10**13) and huge.due(10**13, 10**13) and huge.due(256, 10**13)  # every 1000; the end; 2^8
    assert not huge.due(10**12 + 1, 10**13) and not huge.due(1024, 10**13) and not huge.due(10**13 + 1000, 10**13)


def test_growth_never_lists_the_checkpoint_schedule(runs, monkeypatch):
    """Listing it was a set of every step: 10^12 steps filled the memory before step 1."""
    from seedbed.conditions import Checkpoints

    def refuse(self, total):
        raise AssertionError(f"steps({total}) lists the whole schedule")

    monkeypatch.setattr(Checkpoints, "steps", refuse)
    assert [r.step for r in grow(tiny(), runs_dir=runs, progress=False).checkpoints()] == [0, 1, 2, 4, 8, 10, 20, 30, 40]


def test_evaluation_batches_are_made_one_at_a_time(runs):
    from seedbed.conditions import parse
    from seedbed.grow import eval_batches
    from seedbed.soil import resolve

    cond, soil = resolve(tiny())
    many = cond.model_copy(update={"schedule": cond.schedule.model_copy(update={"eval_batches": 10**9})})
    first = list(itertools.islice(eval_batches(soil, many), 2))  # building 10^9 up front would never return
    assert all(torch.equal(b.tokens, soil.eval_batch(i, 8).tokens) for i, b in enumerate(first))
    # a fixed test set: every example once, in order, in batch-size chunks with a short last one
    data = tiny_dict(architecture={"n_ctx": 4})
    data["soil"] = {"kind": "modular-arithmetic", "p": 11, "train_fraction": 0.5}
    cond, soil = resolve(parse(data))
    chunks = list(eval_batches(soil, cond.model_copy(update={"schedule": cond.schedule.model_copy(update={"batch_size": 7})})))
    assert [len(b.tokens) for b in chunks] == [7] * (soil.eval_size // 7) + ([soil.eval_size % 7] if soil.eval_size % 7 else [])
    assert torch.equal(torch.cat([b.tokens for b in chunks]), soil.eval_batch(0, soil.eval_size).tokens)


def test_a_failed_start_leaves_no_run_behind(runs, monkeypatch):
    from seedbed import grow as grow_module

    def no_memory(*args, **kwargs):
        raise MemoryError("pretend the model does not fit")

    monkeypatch.setattr(grow_module, "Transformer", no_memory)
    with pytest.raises(MemoryError):
        grow(tiny(), runs_dir=runs, progress=False)
    assert not (runs / "tiny").exists()
    monkeypatch.undo()
    assert grow(tiny(), runs_dir=runs, progress=False).steps_done() == 40  # the name is free


LONG = tiny_dict(schedule={"steps": 400, "eval_every": 50}, checkpoints={"log_until": 0, "every": 10})


def _start(tmp_path: Path, name: str) -> tuple[subprocess.Popen, Path]:
    cond = write_toml(tmp_path / f"{name}.toml", {**LONG, "name": name})
    proc = subprocess.Popen(
        [sys.executable, "-m", "seedbed", "grow", str(cond), "--runs-dir", str(tmp_path / "runs"), "--no-progress"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return proc, tmp_path / "runs" / name


def _wait_for_checkpoint(proc: subprocess.Popen, path: Path, step: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"grow ended early: {proc.stderr.read()}")
        if path.joinpath("run.sqlite").exists() and max(checkpoint_steps(path), default=0) >= step:
            return
        time.sleep(0.05)
    pytest.fail("no checkpoint in time")


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(tmp_path):
    ref_cond = write_toml(tmp_path / "ref.toml", {**LONG, "name": "ref"})
    done = cli("grow", str(ref_cond), "--runs-dir", "runs", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    proc, path = _start(tmp_path, "victim")
    _wait_for_checkpoint(proc, path, 100)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(checkpoint_steps(path))
    assert killed_at < 400, "the run finished before it could be killed"
    assert Run.open(path, readonly=True).status() == "crashed"

    resumed = cli("grow", "--resume", str(path), "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming victim from step {killed_at}" in resumed.stdout
    assert_same_weights(final_weights(path), final_weights(tmp_path / "runs" / "ref"))
    # the same files, byte for byte, as the run grown without a kill: weights, metadata (whose key order
    # safetensors takes from a hash map) and the state file (whose pickle must not depend on the resume)
    for name in ("step-000100.safetensors", "step-000400.safetensors", "step-000400.state.pt"):
        assert (path / "checkpoints" / name).read_bytes() == (tmp_path / "runs" / "ref" / "checkpoints" / name).read_bytes(), name
    steps = [s for s, _ in Run.open(path, readonly=True).metric("train/loss")]
    assert steps == list(range(1, 401))  # no step logged twice, none missing


@pytest.mark.slow
def test_ctrl_c_saves_exits_cleanly_and_resumes_identically(tmp_path):
    ref = tmp_path / "ref"
    grow(tiny(**{k: v for k, v in LONG.items() if k in ("schedule", "checkpoints")}, name="victim"), runs_dir=ref, progress=False)

    proc, path = _start(tmp_path, "victim")
    _wait_for_checkpoint(proc, path, 50)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at step" in out and "Traceback" not in err
    run = Run.open(path, readonly=True)
    assert run.status() == "interrupted"
    stopped = run.steps_done()
    assert 50 <= stopped < 400, stopped  # stopped early, after the checkpoint it waited for
    assert run.checkpoints()[-1].step == stopped and run.events()[-1][1:] == ("interrupted", f"stopped at step {stopped}; checkpoint saved")

    resumed = cli("grow", "--resume", str(path), "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(final_weights(path), final_weights(ref / "victim"))


@pytest.mark.slow
def test_data_parallel_two_processes_match_one(tmp_path):
    data = tiny_dict(name="dp", schedule={"steps": 30, "batch_size": 8, "eval_every": 10}, architecture={"attn_only": False})
    cond = write_toml(tmp_path / "dp.toml", data)
    one = cli("grow", str(cond), "--runs-dir", "one", "--no-progress", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "seedbed", "grow", str(cond), "--runs-dir", "two", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = Run.open(tmp_path / "one" / "dp", readonly=True), Run.open(tmp_path / "two" / "dp", readonly=True)
    la, lb = a.metric("train/loss"), b.metric("train/loss")
    assert [s for s, _ in la] == [s for s, _ in lb] == list(range(1, 31))
    for (_, x), (_, y) in zip(la, lb):
        assert abs(x - y) < 1e-4 * max(1.0, abs(x)), (x, y)
    assert a.metric("eval/loss")[-1][1] == pytest.approx(b.metric("eval/loss")[-1][1], rel=1e-4)
    wa, wb = final_weights(tmp_path / "one" / "dp"), final_weights(tmp_path / "two" / "dp")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_text_soil_grows_and_resume_refuses_a_changed_corpus(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 40)
    data = tiny_dict(name="words")
    data["soil"] = {"kind": "text", "paths": [str(corpus)]}
    from seedbed.conditions import parse
    from seedbed.errors import SeedbedError

    run = grow(parse(data), runs_dir=tmp_path / "runs", progress=False)
    assert run.conditions.soil.paths == [str(corpus.resolve())]
    assert Run.open(run.path).artifacts["tokenizer"]["kind"] == "char"
    corpus.write_text("something else entirely, with other letters: XYZ. " * 40)
    with pytest.raises(SeedbedError, match="has changed"):
        grow(resume=run.path, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(p.name for p in (Path(__file__).parent.parent / "examples").glob("*.toml")))
def test_every_example_grows_a_few_steps(tmp_path, example):
    from seedbed import conditions

    cond = conditions.load(Path(__file__).parent.parent / "examples" / example)
    if getattr(cond.soil, "corpus", None):
        pytest.skip("a built-in corpus needs the package registry; tests never use the network")
    short = {"steps": 3, "eval_every": 3, "eval_batches": 1}
    cond = cond.model_copy(update={"schedule": cond.schedule.model_copy(update=short)})
    if example == "qa-head.toml":  # its corpus is generated, and its parent grows on Shakespeare: a stand-in parent
        from seedbed.soil import qa

        qa.write(tmp_path / "qa.txt", conversations=50)
        soil = cond.soil.model_copy(update={"paths": [str(tmp_path / "qa.txt")]})
        parent = grow(cond.model_copy(update={"init": None, "train": conditions.Train(), "soil": soil}),
                      runs_dir=tmp_path, name="parent", progress=False)
        cond = cond.model_copy(update={"soil": soil, "init": cond.init.model_copy(update={"from_": str(parent.path)})})
    run = grow(cond, runs_dir=tmp_path, progress=False)
    assert [r.step for r in run.checkpoints()] == [0, 1, 2, 3]
    assert math.isfinite(run.last_metric("eval/loss"))


def _kill_9_tree(root: int) -> None:
    """SIGKILL a process and all its descendants (found through their parent ids, whatever session they are in).

    Only this test's processes: other tests (or other sessions) growing a run of the same name are untouched.
    """
    parents: dict[int, int] = {}
    for proc_dir in Path("/proc").iterdir():
        try:
            if proc_dir.name.isdigit():
                parents[int(proc_dir.name)] = int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    tree, grew = {root}, True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= found
        grew = bool(found)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_data_parallel_kill_9_then_resume_is_bit_identical_with_dropout(tmp_path):
    """Every rank's RNG state is checkpointed, so even per-rank dropout resumes exactly."""
    data = tiny_dict(schedule={"steps": 1000, "eval_every": 50}, checkpoints={"log_until": 0, "every": 20},
                     architecture={"attn_only": False, "dropout": 0.1})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "seedbed", "grow"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("ref", "victim"):
        write_toml(tmp_path / f"{name}.toml", {**data, "name": name})
    ref = subprocess.run(torchrun + ["ref.toml", "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert ref.returncode == 0, ref.stderr[-2000:]

    proc = subprocess.Popen(torchrun + ["victim.toml", "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    path = tmp_path / "runs" / "victim"
    _wait_for_checkpoint(proc, path, 200)
    _kill_9_tree(proc.pid)  # torchrun and both ranks (torchrun starts its workers in their own sessions)
    proc.wait()
    assert max(checkpoint_steps(path)) < 1000, "the run finished before it could be killed"

    resumed = subprocess.run(torchrun + ["--resume", "runs/victim", "--no-progress"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600, env=env)
    assert resumed.returncode == 0, [line for line in resumed.stderr.splitlines() if "error" in line.lower()][:5]
    assert "resuming victim" in resumed.stdout
    assert_same_weights(final_weights(path), final_weights(tmp_path / "runs" / "ref"))


@pytest.mark.slow
def test_ctrl_c_during_a_long_evaluation_still_saves_and_stops(tmp_path):
    """An evaluation of a million batches is abandoned at Ctrl-C: the checkpoint is written and growth stops."""
    data = {**tiny_dict(schedule={"steps": 100, "eval_every": 2, "eval_batches": 10**6}, checkpoints={"log_until": 1, "every": 1000}),
            "name": "long-eval"}
    cond = write_toml(tmp_path / "long-eval.toml", data)
    proc = subprocess.Popen([sys.executable, "-m", "seedbed", "grow", str(cond), "--runs-dir", str(tmp_path / "runs"), "--no-progress"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = tmp_path / "runs" / "long-eval"
    _wait_for_checkpoint(proc, path, 1)  # the evaluation at step 2 follows at once, and would take hours
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    # the step after the abandoned evaluation carries the stop to every process (step 3); step 2 if Ctrl-C came first
    stopped = checkpoint_steps(path)[-1]
    assert stopped in (2, 3) and f"interrupted at step {stopped}:" in out and "Traceback" not in err
