"""seedbed sweep: the plan and its checks, a local sweep (table, skip, resume), bad input via the CLI, and a real
Ray cluster started here (two nodes) whose worker is killed mid-run: Ray retries the task, the run resumes from
its checkpoint, and every run comes out bit-identical to the same sweep grown by the local pool."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import cli, tiny, tiny_dict, write_toml

from seedbed import sweep
from seedbed.errors import SeedbedError
from seedbed.run import Run, RunLock


# ── the plan ─────────────────────────────────────────────────────────────────
def test_seeds_are_a_range_or_one_seed():
    assert sweep.parse_seeds("0-3") == [0, 1, 2, 3] and sweep.parse_seeds("7") == [7] and sweep.parse_seeds(" 2 - 3") == [2, 3]
    for bad, says in (("5-2", "first seed is after the last"), ("x", "A-B"), ("-3", "A-B"), ("1-", "A-B"),
                      ("0-999999999", "split it")):
        with pytest.raises(SeedbedError, match=says):
            sweep.parse_seeds(bad)


def test_set_values_are_read_as_toml_and_keys_checked_against_the_conditions():
    base = tiny()
    assert sweep.parse_set("schedule.steps=2000,4000", base) == ("schedule.steps", [2000, 4000])
    assert sweep.parse_set("optimizer.lr=1e-3,3e-3", base) == ("optimizer.lr", [1e-3, 3e-3])
    assert sweep.parse_set("optimizer.betas=[0.9,0.95],[0.9,0.99]", base) == ("optimizer.betas", [[0.9, 0.95], [0.9, 0.99]])
    assert sweep.parse_set("schedule.decay=cosine,constant", base) == ("schedule.decay", ["cosine", "constant"])
    assert sweep.parse_set("architecture.d_mlp=32", base)[1] == [32]  # a field unset in the file is still a key
    for bad, says in (
        ("optimizer.lr", "KEY=VALUE"), ("=1", "KEY=VALUE"), ("optimizer.lr=", "KEY=VALUE"),
        ("optimiser.lr=1e-3", "has no key 'optimiser'"), ("optimizer.rate=1", "optimizer has no key 'rate'"),
        ("optimizer.lr.x=1", "single value"), ("init.step=3", "add its table"), ("versions.torch=1", "filled in by seedbed"),
        ("seed=1,2", "--seeds"), ("optimizer.lr=1e-3,1e-3", "repeated"), ("optimizer.lr=1e-3,(x)", "not a value"),
    ):
        with pytest.raises(SeedbedError, match=says.replace("(", r"\(")):
            sweep.parse_set(bad, base)


def test_plan_sets_values_before_derived_ones_and_checks_every_run_strictly():
    data = tiny_dict()
    planned = sweep.plan_runs(data, "c.toml", [0, 1], [("architecture.d_model", [16, 32]), ("optimizer.lr", [1e-3])])
    assert [p.name for p in planned] == ["d_model16_lr0.001_seed0", "d_model16_lr0.001_seed1",
                                         "d_model32_lr0.001_seed0", "d_model32_lr0.001_seed1"]
    assert planned[2].conditions.architecture.d_head == 16 and planned[1].conditions.seed == 1  # d_head follows d_model
    with pytest.raises(SeedbedError, match=r"optimizer.lr.*write a number"):
        sweep.plan_runs(data, "c.toml", [0], [("optimizer.lr", [1e-3, "fast"])])
    with pytest.raises(SeedbedError, match="n_heads=3 does not divide"):
        sweep.plan_runs(data, "c.toml", [0], [("architecture.n_heads", [2, 3])])


def test_ray_addresses_are_checked_before_anything_is_written():
    assert sweep.ray_endpoint("10.0.0.5:6379") == ("10.0.0.5", 6379) and sweep.ray_endpoint("auto") is None
    assert sweep.ray_endpoint("ray://head.example:10001") == ("head.example", 10001)
    for bad in ("head", "head:0", "head:99999", "http://head:6379", ""):
        with pytest.raises(SeedbedError, match="HOST:PORT"):
            sweep.ray_endpoint(bad)
    with pytest.raises(SeedbedError, match="no Ray cluster answers"):
        sweep.connect_ray(f"127.0.0.1:{closed_port()}")


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as it does where Ray is not installed
    with pytest.raises(SeedbedError, match=r"pip install 'seedbed\[ray\]'"):
        sweep.Executor.connect("auto")


def closed_port() -> int:
    """A port nobody listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ── bad input, as a user meets it ────────────────────────────────────────────
@pytest.mark.slow
def test_bad_sweeps_are_one_line_exit_2_and_write_nothing(tmp_path: Path):
    write_toml(tmp_path / "c.toml", tiny_dict())
    cases = [  # the rest of the checks are tested in-process above
        (["--seeds", "0-1", "--set", "optimizer.lr"], "KEY=VALUE"),
        (["--seeds", "0-1", "--set", "optimizer.learning_rate=1e-3"], "has no key 'learning_rate'"),
        (["--seeds", "5-2"], "first seed is after the last"),
        (["--seeds", "0-1", "--ray", f"127.0.0.1:{closed_port()}"], "no Ray cluster answers"),
    ]
    for args, says in cases:
        t0 = time.perf_counter()
        r = cli("sweep", "c.toml", *args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], (args, r.stderr)
        assert "Traceback" not in r.stderr and time.perf_counter() - t0 < 60
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"], args  # nothing written


def test_ray_on_a_trial_needs_seeds():
    from seedbed.trials.runner import check_request

    with pytest.raises(SeedbedError, match="add --seeds N"):
        check_request("induction", "tiny", 0, None, None, ray="auto")


# ── a local sweep ────────────────────────────────────────────────────────────
def fingerprints(folder: Path) -> dict[str, object]:
    """Every run's weights at every checkpoint and its whole training-loss series: equal, bit for bit.

    (Weights, not the checkpoint's recorded sha256: that also covers the optimiser state's pickle, whose bytes
    differ after a resume — the same values, shared objects pickled apart — seen here, left to grow.)"""
    import hashlib

    from safetensors.torch import load_file

    out: dict[str, object] = {}
    for path in sorted(p for p in folder.iterdir() if (p / "run.sqlite").is_file()):
        run = Run.open(path, readonly=True)
        try:
            for c in run.checkpoints():
                weights = load_file(str(path / c.file))
                out[f"{path.name}@{c.step}"] = hashlib.sha256(b"".join(weights[k].numpy().tobytes() for k in sorted(weights))).hexdigest()
            out[f"{path.name} train/loss"] = run.metric("train/loss")
        finally:
            run.close()
    return out


def events(path: Path) -> list[tuple[int, str, str]]:
    run = Run.open(path, readonly=True)
    try:
        return run.events()
    finally:
        run.close()


@pytest.mark.slow
def test_local_sweep_gathers_one_table_skips_finished_runs_and_resumes_a_crashed_one(tmp_path: Path):
    from seedbed.grow import grow

    write_toml(tmp_path / "c.toml", tiny_dict())
    args = ["c.toml", "--seeds", "0-1", "--set", "optimizer.lr=1e-3,3e-3"]
    env = {"OMP_NUM_THREADS": "1"}
    r = cli("sweep", *args, "--out", "a", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    a = tmp_path / "a"
    rows = list(csv.DictReader((a / "table.csv").open()))
    assert len(rows) == 4 and {(r["optimizer.lr"], r["seed"]) for r in rows} == {(lr, s) for lr in ("0.001", "0.003") for s in "01"}
    for row in rows:
        run = Run.open(a / row["run"], readonly=True)
        try:
            assert row["status"] == "done" and int(row["steps"]) == 40
            assert float(row["eval/loss"]) == run.last_metric("eval/loss") and float(row["train/loss"]) == run.last_metric("train/loss")
            assert float(row["watch/weight_norm"]) == run.last_metric("watch/weight_norm")  # an observer's last value
            assert run.conditions.optimizer.lr == float(row["optimizer.lr"]) and run.conditions.seed == int(row["seed"])
        finally:
            run.close()
    assert {"onset/icl_score", "onset/induction", "watch/icl_score"} <= set(rows[0])
    import pyarrow.parquet as pq

    table = pq.read_table(a / "table.parquet").to_pylist()
    assert [t["run"] for t in table] == [r["run"] for r in rows] and table[0]["eval/loss"] == float(rows[0]["eval/loss"])
    page = (a / "report.html").read_text()
    assert "Per setting, over seeds" in page and all(r["run"] in page for r in rows)
    assert len({r["eval/loss"] for r in rows}) == 4  # the settings and seeds really differ

    # the same sweep into b: one run finished already (copied: kept as it is), one crashed at step 20 (resumed)
    b = tmp_path / "b"
    b.mkdir()
    shutil.copy(a / "sweep.json", b / "sweep.json")
    shutil.copytree(a / "lr0.003_seed1", b / "lr0.003_seed1")
    kept_mtime = (b / "lr0.003_seed1" / "run.sqlite").stat().st_mtime_ns
    plan = json.loads((a / "sweep.json").read_text())
    crashed = next(p for p in sweep.plan_runs(plan["conditions"], "c.toml", [0, 1], list(plan["set"].items()))
                   if p.name == "lr0.001_seed0")

    def crash(model, step):
        if step == 20:
            raise KeyboardInterrupt  # a crash at step 20's observation, before its checkpoint: the newest is step 10
        return {}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the pool's workers grow (2 runs a time on 2 cores); other thread counts sum otherwise
    try:
        with pytest.raises(KeyboardInterrupt):
            grow(crashed.conditions, runs_dir=b, name=crashed.name, observers=[crash], progress=False)
    finally:
        torch.set_num_threads(threads)
    again = cli("sweep", *args, "--out", "b", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "(continuing)" in again.stdout and "1 runs already finished: kept" in again.stdout
    assert "resuming lr0.001_seed0 from step 10" in again.stdout
    assert (b / "lr0.003_seed1" / "run.sqlite").stat().st_mtime_ns == kept_mtime
    assert [k for _, k, _ in events(b / crashed.name) if k in ("start", "resume", "done")] == ["start", "resume", "done"]
    assert fingerprints(b) == fingerprints(a)  # every checkpoint of every run, bit for bit
    # a third time: nothing to grow; a different grid in the same folder is refused
    third = cli("sweep", *args, "--out", "b", cwd=tmp_path, env=env)
    assert third.returncode == 0 and "4 runs already finished" in third.stdout and "growing" not in third.stdout
    other = cli("sweep", "c.toml", "--seeds", "0-2", "--out", "b", cwd=tmp_path, env=env)
    assert other.returncode == 2 and "holds another sweep" in other.stderr


# ── a real Ray cluster ───────────────────────────────────────────────────────
class LocalCluster:
    """A Ray cluster on this machine: a head and a second node, in a temp dir of its own. Stopped precisely: only
    the processes it started (their process groups and their children), never `ray stop` (it stops every Ray here)."""

    def __init__(self, head_cpus: int = 2, node_cpus: int = 1) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="sbray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.groups: list[int] = []
        self.cpus = (head_cpus, node_cpus)

    def start(self) -> LocalCluster:
        ray = str(Path(sys.executable).with_name("ray"))
        common = ["--temp-dir", str(self.temp), "--object-store-memory", str(80 * 2**20), "--disable-usage-stats"]
        head = [ray, "start", "--head", "--port", str(self.port), "--num-cpus", str(self.cpus[0]), "--include-dashboard", "false",
                "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()), *common]
        node = [ray, "start", "--address", self.address, "--num-cpus", str(self.cpus[1]),
                "--dashboard-agent-listen-port", str(free_port()), *common]
        for command in (head, node) if self.cpus[1] else (head,):
            p = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
            self.groups.append(p.pid)
            out, _ = p.communicate(timeout=120)
            if p.returncode != 0:
                self.stop()
                raise RuntimeError(f"ray start failed: {out[-2000:]}")
        return self

    def processes(self) -> set[int]:
        """Every live process of this cluster: its groups, and their descendants (workers are the raylets' children)."""
        table = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(pid)] = (int(fields[1]), int(fields[2]))  # ppid, pgid
        mine = {p for p, (_, group) in table.items() if group in self.groups}
        while more := {p for p, (parent, _) in table.items() if parent in mine} - mine:
            mine |= more
        return mine

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 5
            while self.live() and time.time() < deadline:
                time.sleep(0.1)
        shutil.rmtree(self.temp, ignore_errors=True)

    def live(self) -> set[int]:
        """This cluster's processes that still run (not zombies)."""
        alive = set()
        for pid in self.processes():
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(pid)
            except OSError:
                pass
        return alive


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_checkpoint(path: Path, at_least: int, total: int, timeout: float) -> int:
    """The pid growing the run at PATH once it has a checkpoint at or past `at_least` (and is not finished)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (path / "run.sqlite").is_file():
            try:
                run = Run.open(path, readonly=True)
                try:
                    done = run.steps_done()
                finally:
                    run.close()
            except (SeedbedError, OSError):
                done = 0
            holder = RunLock(path).holder()
            if at_least <= done < total and holder:
                return holder
            if done >= total:
                raise AssertionError(f"{path.name} finished before it could be interrupted")
        time.sleep(0.02)
    raise AssertionError(f"{path.name} did not reach step {at_least} in {timeout:.0f}s")


@pytest.mark.slow
def test_a_sweep_on_a_ray_cluster_survives_a_killed_worker_and_matches_the_local_pool(tmp_path: Path):
    pytest.importorskip("ray")
    write_toml(tmp_path / "c.toml", tiny_dict(schedule={"eval_every": 25}, checkpoints={"log_until": 8, "every": 50}))
    args = ["c.toml", "--seeds", "0-1", "--set", "schedule.steps=40,600"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cluster = LocalCluster().start()
    try:
        submit = subprocess.Popen([sys.executable, "-m", "seedbed", "sweep", *args, "--out", "ray", "--ray", cluster.address],
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        victim = tmp_path / "ray" / "steps600_seed0"
        try:
            pid = wait_for_checkpoint(victim, 100, 600, timeout=150)
            assert pid in cluster.processes()  # a Ray worker of this cluster, nobody else's process
            os.kill(pid, signal.SIGKILL)
            killed_at = Run.open(victim, readonly=True)
            at = killed_at.steps_done()
            killed_at.close()
            output, _ = submit.communicate(timeout=240)
        finally:
            if submit.poll() is None:
                submit.kill()
        assert submit.returncode == 0, output[-3000:]
        assert "as Ray tasks on 3 CPUs" in output  # both nodes joined
        kinds = [(s, k) for s, k, _ in events(victim) if k in ("start", "resume", "done")]
        assert [k for _, k in kinds] == ["start", "resume", "done"] and kinds[1][0] >= at >= 100, (kinds, at)
        assert f"resuming {victim.name} from step {kinds[1][0]}" in output  # the retried task found the run and resumed it
        print(f"killed worker {pid} with the run at step {at}'s checkpoint; Ray retried the task and it resumed at step {kinds[1][0]}")
        print("\n".join(line for line in output.splitlines() if victim.name in line or "died" in line or "rror" in line))
    finally:
        cluster.stop()
    assert not cluster.live()
    local = cli("sweep", *args, "--out", "local", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert local.returncode == 0, local.stderr
    on_ray, here = fingerprints(tmp_path / "ray"), fingerprints(tmp_path / "local")
    # the checkpoints both kept (the live watcher adds some while a transition is under way, on its own time budget):
    # every scheduled one, each run's last, the killed run's included — and every step's training loss
    common = on_ray.keys() & here.keys()
    assert {f"{n}@{s}" for n, s in (("steps40_seed0", 40), ("steps600_seed0", 600), ("steps600_seed0", 300))} <= common
    assert len(common) > 40 and all(on_ray[k] == here[k] for k in common)
    assert all(on_ray[k] == here[k] for k in here if k.endswith("train/loss"))
    assert (tmp_path / "ray" / "table.csv").read_text().splitlines()[0] == (tmp_path / "local" / "table.csv").read_text().splitlines()[0]
