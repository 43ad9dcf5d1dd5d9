"""One-way mirrors of a run (seedbed.tracking): TensorBoard event files, read back by TensorBoard itself."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from conftest import cli, tiny, tiny_dict, write_toml
from safetensors.torch import load

from seedbed.checkpoint import safetensors_metadata
from seedbed.errors import SeedbedError
from seedbed.grow import grow
from seedbed.run import Run
from seedbed.tracking import TensorBoard, mirror

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader


def series(run_path: Path, name: str) -> list[tuple[int, float]]:
    run = Run.open(run_path, readonly=True)
    try:
        return run.metric(name)
    finally:
        run.close()


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*"))


def raw_steps(folder: Path, tag: str) -> list[int]:
    """Every step `tag` has in the folder's event files, duplicates included (no TensorBoard purging)."""
    steps = []
    for f in event_files(folder):
        for event in EventFileLoader(str(f)).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def tensorboard_loss(folder: Path) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(s.step, s.value) for s in acc.Scalars("train/loss")]


def assert_mirrors(run_path: Path, folder: Path) -> None:
    """The mirror holds the run's loss series (float32, as TensorBoard keeps scalars), each step once."""
    want = series(run_path, "train/loss")
    got = tensorboard_loss(folder)
    assert [s for s, _ in got] == [s for s, _ in want] == sorted({s for s, _ in want})
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    assert raw_steps(folder, "train/loss") == [s for s, _ in want]


def test_conditions_tracking_writes_the_loss_series_and_events_inside_the_run(runs):
    folder, seen = runs / "tiny" / "mirrors" / "tb", {}

    def listen(run: Run, step: int, observed: dict) -> list[int]:  # during growth: the mirror follows each commit
        seen[step] = raw_steps(folder, "train/loss")
        return []

    run = grow(tiny(tracking={"tensorboard": "mirrors/tb"}), runs_dir=runs, progress=False, listeners=[listen])
    assert seen[30] == list(range(1, 31))
    assert len(event_files(folder)) == 1
    assert_mirrors(run.path, folder)
    acc = EventAccumulator(str(folder))
    acc.Reload()
    assert [s.step for s in acc.Scalars("eval/loss")] == [10, 20, 30, 40]
    done = acc.Tensors("events/done")
    assert [e.step for e in done] == [40] and done[0].tensor_proto.string_val[0].decode().startswith("grew 40 steps")
    assert Run.open(run.path, readonly=True).conditions.tracking.tensorboard == "mirrors/tb"  # kept for a resume


class Crash(Exception):
    pass


def crash_at(step: int):
    """An observer that stops growth at `step` as a crash would: after step-by-step commits the mirror has seen."""
    def observe(model, at: int) -> dict[str, float]:
        if at == step:
            raise Crash(at)
        return {}
    return observe


def test_resume_rewrites_the_mirror_without_duplicate_steps(runs):
    with pytest.raises(Crash):
        grow(tiny(tracking={"tensorboard": "tb"}), runs_dir=runs, progress=False, observers=[crash_at(25)], observe_every=1)
    path, folder = runs / "tiny", runs / "tiny" / "tb"
    assert raw_steps(folder, "train/loss") == list(range(1, 25))  # what was committed: steps 21-24 lie past checkpoint 20
    grow(resume=path, progress=False)
    assert [s for s, _ in series(path, "train/loss")] == list(range(1, 41))
    assert len(event_files(folder)) == 1
    assert_mirrors(path, folder)
    assert raw_steps(folder, "train/loss") == list(range(1, 41))  # 21-24 once, though grown twice
    resumes = EventAccumulator(str(folder))
    resumes.Reload()
    assert [e.step for e in resumes.Tensors("events/resume")] == [20]


def test_mirror_after_the_fact_and_from_python_anywhere(runs, tmp_path):
    run = grow(tiny(), runs_dir=runs, progress=False)
    assert not (run.path / "tensorboard").exists()
    mirror(run.path, [TensorBoard(), TensorBoard(tmp_path / "elsewhere")])
    assert_mirrors(run.path, run.path / "tensorboard")
    assert_mirrors(run.path, tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "events.out.tfevents.1.other").write_bytes(b"")  # not the mirror's: left alone
    mirror(run.path, [TensorBoard(tmp_path / "elsewhere")])
    assert len(event_files(tmp_path / "elsewhere")) == 2


def checkpoints(run_path: Path) -> list[tuple[int, dict[str, torch.Tensor], str]]:
    """Every checkpoint's step, weights and state hash (optimizer, RNG). Not the file's sha256: safetensors
    writes its metadata in no fixed order, so two identical checkpoints' files may differ byte for byte."""
    run = Run.open(run_path, readonly=True)
    try:
        recs = run.checkpoints()
    finally:
        run.close()
    out = []
    for rec in recs:
        data = (run_path / rec.file).read_bytes()
        out.append((rec.step, load(data), safetensors_metadata(data)["state_sha256"]))
    return out


class Broken:
    label = "a broken sink"

    def begin(self, run: Path) -> None:
        pass

    def write(self, scalars, events) -> None:
        raise OSError("disk full")

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_sinks_leave_the_weights_bit_identical_and_a_failing_one_stops_nothing(tmp_path):
    plain = grow(tiny(architecture={"dropout": 0.1}), runs_dir=tmp_path / "plain", progress=False)
    mirrored = grow(tiny(architecture={"dropout": 0.1}, tracking={"tensorboard": "tb"}), runs_dir=tmp_path / "mirrored",
                    progress=False, sinks=[TensorBoard(tmp_path / "tb2"), Broken()])
    assert mirrored.status() == "done" and event_files(mirrored.path / "tb")
    a, b = checkpoints(plain.path), checkpoints(mirrored.path)
    assert [(step, state) for step, _, state in a] == [(step, state) for step, _, state in b] and len(a) == 9
    for (_, wa, _), (_, wb, _) in zip(a, b):
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("tracking", "says"),
    [
        ({"tensorboard": "/tmp/elsewhere"}, "tracking.tensorboard: give a folder inside the run folder"),
        ({"tensorboard": "../../up"}, "tracking.tensorboard: give a folder inside the run folder"),
        ({"tensorboard": "~/tb"}, "tracking.tensorboard: give a folder inside the run folder"),
        ({"tensorboard": ""}, "tracking.tensorboard: give a folder inside the run folder"),
        ({"tensorboard": "checkpoints"}, "is one of the run's own files"),
        ({"tensorboard": 3}, "tracking.tensorboard: Input should be a valid string (got 3): write it in quotes"),
        ({"tensorboard": True}, "write it in quotes"),
        ({"wandb": "x"}, "unknown key 'tracking.wandb'"),
        ({"mlflow": ""}, "tracking.mlflow"),
    ],
)
def test_bad_tracking_is_one_line_before_any_folder(runs, tracking, says):
    from seedbed.conditions import parse

    with pytest.raises(SeedbedError, match=None) as err:
        grow(parse(tiny_dict(tracking=tracking)), runs_dir=runs, progress=False)
    assert says in str(err.value) and "\n" not in str(err.value)
    assert not runs.exists() or not any(runs.iterdir())


def test_a_missing_package_names_the_extra(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(SeedbedError, match=r"pip install 'seedbed\[tracking\]'"):
        grow(tiny(tracking={"tensorboard": "tb"}), runs_dir=runs, progress=False)
    if "mlflow" not in sys.modules:
        monkeypatch.setitem(sys.modules, "mlflow", None)
        with pytest.raises(SeedbedError, match="needs the mlflow package: pip install mlflow"):
            grow(tiny(tracking={"mlflow": "seedbed"}), runs_dir=runs, progress=False)
    assert not runs.exists() or not any(runs.iterdir())


def test_cli_refuses_a_tracking_path_outside_the_run(tmp_path):
    cond = write_toml(tmp_path / "c.toml", tiny_dict(tracking={"tensorboard": "../../../outside"}))
    done = cli("grow", str(cond), "--runs-dir", "runs", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "tracking.tensorboard" in done.stderr and not (tmp_path / "runs").exists()


# ── a real TensorBoard process, reading the mirror over HTTP ───────────────────
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tensorboard_at(tmp_path):
    """Start `tensorboard --logdir FOLDER` on 127.0.0.1; its whole process group is killed afterwards."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(folder), "--host", "127.0.0.1",
                                 "--port", str(port), "--reload_interval", "1"],
                                stdout=subprocess.DEVNULL, stderr=(tmp_path / "tensorboard.log").open("w"), start_new_session=True)
        procs.append(proc)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def fetch_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_a_tensorboard_process_serves_the_runs_loss_series(runs, tensorboard_at, tmp_path):
    run = grow(tiny(tracking={"tensorboard": "tb"}), runs_dir=runs, progress=False)
    want = series(run.path, "train/loss")
    base = tensorboard_at(runs)  # all runs' mirrors: TensorBoard names this one "tiny/tb"
    url = f"{base}/data/plugin/scalars/scalars?run=tiny/tb&tag=train/loss"
    got, deadline = None, time.time() + 120
    while time.time() < deadline:  # TensorBoard loads event files in the background after it starts
        with contextlib.suppress(OSError, ValueError):
            got = fetch_json(url)
            if len(got) == len(want):
                break
        time.sleep(0.25)
    assert got is not None, (tmp_path / "tensorboard.log").read_text()[-2000:]
    assert [step for _, step, _ in got] == [s for s, _ in want]
    assert [value for _, _, value in got] == pytest.approx([v for _, v in want], rel=1e-6)
    assert "tiny/tb" in fetch_json(f"{base}/data/runs")


# ── MLflow, where it is installed ─────────────────────────────────────────────
def test_mlflow_mirror_rewrites_on_resume(runs, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from seedbed.tracking import MLflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(Crash):
        grow(tiny(), runs_dir=runs, progress=False, observers=[crash_at(25)], observe_every=1, sinks=[MLflow("t", uri)])
    grow(resume=runs / "tiny", progress=False, sinks=[MLflow("t", uri)])
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("t")
    (only,) = client.search_runs([experiment.experiment_id])  # the crashed run's mirror was deleted, not kept beside
    history = client.get_metric_history(only.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 41))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([v for _, v in series(runs / "tiny", "train/loss")])


class StandInClient:
    """The part of MLflow's documented MlflowClient API the sink uses, kept in memory: it checks seedbed's side
    (what is deleted, created and logged on a rewrite), not MLflow itself (the test above does, where installed)."""

    experiments: ClassVar[dict[str, str]] = {}  # the store, shared by every client (reset per test)
    runs: ClassVar[dict[str, dict]] = {}

    def __init__(self, tracking_uri=None) -> None:
        self.uri = tracking_uri

    def get_experiment_by_name(self, name):
        found = self.experiments.get(name)
        return None if found is None else type("Experiment", (), {"experiment_id": found})()

    def create_experiment(self, name):
        self.experiments[name] = str(len(self.experiments))
        return self.experiments[name]

    def search_runs(self, experiment_ids, filter_string=""):
        import re

        key = re.fullmatch(r"tags\.`seedbed\.run` = '([0-9a-f]+)'", filter_string).group(1)
        return [type("Run", (), {"info": type("Info", (), {"run_id": rid})()})()
                for rid, r in self.runs.items() if r["experiment"] in experiment_ids and r["tags"]["seedbed.run"] == key
                and not r["deleted"]]

    def delete_run(self, run_id):
        self.runs[run_id]["deleted"] = True

    def create_run(self, experiment_id, run_name=None, tags=None):
        run_id = f"r{len(self.runs)}"
        self.runs[run_id] = {"experiment": experiment_id, "name": run_name, "tags": tags, "deleted": False, "metrics": [],
                             "texts": {}, "ended": False}
        return type("Run", (), {"info": type("Info", (), {"run_id": run_id})()})()

    def log_batch(self, run_id, metrics=()):
        assert len(metrics) <= 1000  # MLflow's limit per call
        self.runs[run_id]["metrics"] += [(m.key, m.step, m.value) for m in metrics]

    def log_text(self, run_id, text, artifact_file):
        self.runs[run_id]["texts"][artifact_file] = text

    def set_terminated(self, run_id):
        self.runs[run_id]["ended"] = True


def test_mlflow_sink_deletes_and_rewrites_its_run_on_resume(runs, monkeypatch):
    import types
    from collections import namedtuple

    mlflow = types.ModuleType("mlflow")
    mlflow.MlflowClient = StandInClient
    entities = types.ModuleType("mlflow.entities")
    entities.Metric = namedtuple("Metric", "key value timestamp step")
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.setitem(sys.modules, "mlflow.entities", entities)
    monkeypatch.setattr(StandInClient, "experiments", {})
    monkeypatch.setattr(StandInClient, "runs", {})

    with pytest.raises(Crash):
        grow(tiny(tracking={"mlflow": "seedbed"}), runs_dir=runs, progress=False, observers=[crash_at(25)], observe_every=1)
    (first,) = StandInClient.runs.values()
    assert sorted(s for k, s, _ in first["metrics"] if k == "train/loss") == list(range(1, 25)) and first["ended"]
    grow(resume=runs / "tiny", progress=False)  # [tracking] mlflow, from the run's saved conditions
    first, second = StandInClient.runs.values()
    assert first["deleted"] and not second["deleted"] and second["name"] == "tiny"
    loss = [(s, v) for k, s, v in second["metrics"] if k == "train/loss"]
    assert loss == series(runs / "tiny", "train/loss")  # every step once, in order
    assert "\tdone\tgrew 40 steps" in second["texts"]["seedbed/events.tsv"]
