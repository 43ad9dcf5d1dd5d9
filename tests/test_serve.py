"""`seedbed serve` over real HTTP: a real process on a free port, a real runs folder.

It must serve only what is under the runs folder (no `..`, encoded or not, no absolute path, no link out),
never write a run, show a corrupt or half-written run as such, live through clients that hang up
mid-stream, and listen on 127.0.0.1 unless told otherwise. The follower (what the live page streams)
is also tested alone: a snapshot, then only the rows that landed since.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import tiny

from seedbed.grow import grow
from seedbed.run import Run
from seedbed.serve.data import Follower, RunsTable

SECRET = "the-secret-outside-the-runs-folder"


# ── a real server ────────────────────────────────────────────────────────────
@contextmanager
def served(runs_dir: Path, *args: str):
    """`python -m seedbed serve RUNS_DIR --port 0 ARGS` in its own process group; yields (port, the lines it printed)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "seedbed", "serve", str(runs_dir), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"seedbed serve ended: {''.join(lines)}")
            lines.append(line)
            found = re.search(r"http://[^/]+:(\d+)/", line)
            if found:
                port = int(found.group(1))
                wait_until_up(port, proc)
                if "--host" in args:
                    lines.append(proc.stdout.readline())  # the warning line follows the address
                yield port, lines
                assert proc.poll() is None, "the server died"
                return
        raise AssertionError(f"seedbed serve said no address: {''.join(lines)}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stdout.close()


def wait_until_up(port: int, proc: subprocess.Popen) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, "seedbed serve ended before listening"
            time.sleep(0.1)
    raise AssertionError("seedbed serve does not answer")


def get(port: int, target: str, timeout: float = 60) -> tuple[int, str]:
    """GET `target` exactly as written (http.client sends the path unnormalised: `..` and `%2e` reach the server)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", target)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def first_event(port: int, target: str) -> tuple[str, dict]:
    """The first server-sent event of a stream, then hang up."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", target)
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
        kind, data = "", ""
        while True:
            line = r.fp.readline().decode()
            if line.startswith("event: "):
                kind = line[7:].strip()
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "\n" and kind:
                return kind, json.loads(data)
    finally:
        conn.close()


def fingerprint(folder: Path) -> dict[str, tuple]:
    """Every file under `folder`: its bytes' hash and its modification time (what a write would change)."""
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not f.is_symlink():
            out[str(f.relative_to(folder))] = (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A runs folder with a good run, a trial's report, a corrupt run, a half-written run and links pointing out."""
    top = tmp_path_factory.mktemp("serve")
    runs, outside = top / "runs", top / "outside"
    grow(tiny(), runs_dir=runs, name="good", progress=False)
    (runs / "trial-x").mkdir()
    (runs / "trial-x" / "report.html").write_text("<html><body>the trial's own report</body></html>")
    (runs / "trial-x" / "trial.json").write_text(json.dumps({"verdict": "held"}))
    # outside the runs folder: a secret, a whole run, and a report
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    grow(tiny(schedule={"steps": 4}), runs_dir=outside, name="elsewhere", progress=False)
    (outside / "elsewhere" / "report.html").write_text(SECRET)
    (runs / "linked").symlink_to(outside / "elsewhere")  # a run folder that is a link out
    (runs / "leaky").mkdir()
    (runs / "leaky" / "report.html").symlink_to(outside / "secret.txt")  # a report that is a link out
    # corrupt: garbage where the index should be; half-written: an index and nothing else
    (runs / "corrupt").mkdir()
    (runs / "corrupt" / "run.sqlite").write_bytes(b"not a database at all" * 100)
    (runs / "corrupt" / "conditions.toml").write_text("[[[ not toml")
    (runs / "half").mkdir()
    Run(runs / "half").close()  # the tables, no conditions.toml, no checkpoints
    return {"runs": runs, "outside": outside, "before": everything(runs, outside)}


def everything(runs: Path, outside: Path) -> dict:
    return fingerprint(runs) | {f"outside/{k}": v for k, v in fingerprint(outside).items()}


@pytest.fixture(scope="module")
def server(world):
    """One server for the module (starting one takes seconds): (port, the lines it printed)."""
    with served(world["runs"]) as found:
        yield found


# ── over HTTP ────────────────────────────────────────────────────────────────
@pytest.mark.slow
def test_serves_inside_the_runs_folder_only_and_writes_nothing(world, server):
    port, lines = server
    assert "read-only" in lines[0] and "127.0.0.1" in lines[0]
    status, body = get(port, "/")
    assert status == 200 and "<table id=\"runs\">" in body
    assert get(port, "/report?path=trial-x") == (200, "<html><body>the trial's own report</body></html>")
    assert get(port, "/static/vendor/uPlot.LICENSE")[1].startswith("The MIT License")
    kind, snap = first_event(port, "/api/run/stream?path=good")
    assert kind == "snapshot" and snap["status"] == "done" and snap["series"]["train/loss"][0][-1] == 40
    status, inside = get(port, "/api/inside?path=good&step=40")
    assert status == 200 and json.loads(inside)["n_heads"] == 2

    refused = [
        "/report?path=../outside", "/report?path=..%2Foutside", "/report?path=%2e%2e/outside",
        "/report?path=%2E%2E%2Foutside%2Fsecret.txt", "/report?path=/etc", f"/report?path={world['outside']}",
        "/report?path=linked", "/report?path=leaky", "/report?path=good/../..",
        "/api/run/stream?path=linked", "/api/run/stream?path=../outside/elsewhere", "/api/run/stream?path=%2e%2e",
        "/api/inside?path=linked&step=0", "/api/inside?path=..%2foutside%2felsewhere&step=0", "/api/scores?path=linked",
        "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/data.py", "/static/..%2f..%2fdata.py",
        "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2foutside/secret.txt", "/../outside/secret.txt", "/%2e%2e/%2e%2e/etc/passwd",
    ]
    for target in refused:
        status, body = get(port, target)
        assert status in (400, 404, 422), f"{target} answered {status}"
        assert SECRET not in body and "root:" not in body and "def " not in body, target
    # the runs table does not list the link, nor anything outside
    _, table = first_event(port, "/api/runs/stream")
    assert "linked" not in [r["path"] for r in table["runs"]]
    assert str(world["outside"]) not in json.dumps(table)
    assert everything(world["runs"], world["outside"]) == world["before"], "serving changed a file"


@pytest.mark.slow
def test_corrupt_and_half_written_runs_show_as_such(server):
    port, _ = server
    _, table = first_event(port, "/api/runs/stream")
    rows = {r["path"]: r for r in table["runs"]}
    assert rows["corrupt"]["status"] == "unreadable" and "not a readable run index" in rows["corrupt"]["problem"]
    assert rows["half"]["problem"] and "conditions.toml" in rows["half"]["problem"]
    assert rows["good"]["status"] == "done" and rows["good"]["steps"] == 40 and rows["good"]["problem"] is None
    assert {t["path"]: t["verdict"] for t in table["trials"]} == {"trial-x": "held"}
    assert first_event(port, "/api/run/stream?path=corrupt")[0] == "problem"
    kind, snap = first_event(port, "/api/run/stream?path=half")
    assert kind == "snapshot" and snap["meta"]["problem"] and snap["checkpoints"] == []
    status, body = get(port, "/api/inside?path=half&step=0")
    assert status == 422 and "no checkpoint" in json.loads(body)["problem"]
    assert get(port, "/api/inside?path=good&step=nope")[0] == 422
    assert get(port, "/")[0] == 200  # and the server is still there


@pytest.mark.slow
def test_survives_clients_that_hang_up_mid_stream(world, server):
    port, _ = server
    for i in range(30):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        target = "/api/run/stream?path=good" if i % 2 else "/api/runs/stream"
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        if i % 3:  # hang up mid-stream, after the first event
            got = b""
            while b"event: " not in got:
                chunk = s.recv(4096)
                assert chunk, "the server closed the stream"
                got += chunk
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a polite close
        s.close()
    kind, _ = first_event(port, "/api/run/stream?path=good")
    assert kind == "snapshot" and get(port, "/")[0] == 200
    assert everything(world["runs"], world["outside"]) == world["before"], "serving changed a file"


# ── binding ─────────────────────────────────────────────────────────────────
def listening_on(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) of the sockets listening on `port`."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            out.add(address)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp (Linux)")
def test_binds_this_machine_only_unless_told(world, server):
    port, lines = server
    assert listening_on(port) == {"0100007F"}  # 127.0.0.1 only
    assert not any("warning" in line for line in lines)
    with served(world["runs"], "--host", "0.0.0.0") as (port, lines):
        assert listening_on(port) == {"00000000"}
        assert "warning: --host 0.0.0.0 listens beyond this machine" in "".join(lines)
        assert get(port, "/")[0] == 200


def test_a_taken_port_or_a_missing_folder_is_one_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        from conftest import cli

        r = cli("serve", str(tmp_path), "--port", str(taken.getsockname()[1]), cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is in use: give another with --port" in r.stderr
        r = cli("serve", str(tmp_path / "nope"), cwd=tmp_path)
        assert r.returncode == 2 and "is not a folder" in r.stderr and "Traceback" not in r.stderr
    finally:
        taken.close()


# ── the follower alone ───────────────────────────────────────────────────────
def test_follower_sends_a_snapshot_then_only_new_rows(tmp_path):
    grow(tiny(schedule={"steps": 20}), runs_dir=tmp_path, name="r", progress=False)
    path = tmp_path / "r"
    follower = Follower(path, status_every=1e9)
    snap = follower.snapshot()
    assert snap["series"]["train/loss"][0][-1] == 20 and snap["status"] == "done" and snap["checkpoints"][-1] == 20
    assert follower.poll() is None  # nothing changed: nothing read

    writer = Run(path)  # rows landing the way growth writes them
    writer.log_metrics(21, {"train/loss": 1.5, "watch/induction/L1H0": float("nan")})
    writer.commit()
    time.sleep(0.01)
    kind, delta = follower.poll()
    assert kind == "append" and delta["series"] == {"train/loss": [[21], [1.5]], "watch/induction/L1H0": [[21], [None]]}
    writer.log_event(21, "emergence", "induction score of L1H0 rose 0.1 → 0.6")
    kind, delta = follower.poll()
    assert kind == "append" and [e["kind"] for e in delta["events"]] == ["emergence"] and "series" not in delta

    writer.forget_after(10)  # a resume: rows past its checkpoint go, and come again
    writer.log_event(10, "resume", "resumed at step 10")
    kind, again = follower.poll()
    assert kind == "snapshot" and again["series"]["train/loss"][0][-1] == 10
    writer.close()

    table = RunsTable(tmp_path).rows()
    assert [r["path"] for r in table["runs"]] == ["r"] and table["runs"][0]["status"] == "crashed"  # resumed, nobody growing
