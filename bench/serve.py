"""What watching costs a growing run: the same grow with and without `seedbed serve` and a client following it.

    python bench/serve.py                 # 3 interleaved pairs of 300 steps (a few minutes on 2 quiet cores)
    python bench/serve.py --steps 100 --repeats 1   # smoke test

Each pair grows the same conditions (examples/induction.toml's model, `--steps` steps, an eval every 10
steps, so the index is committed 30 times a run and the page has something to follow), same seed,
in a fresh folder, as `seedbed grow` in its own process:
- bare: nothing else running;
- watched: `seedbed serve` on the folder, started (and answering) before the grow, and a client process
  following both streams the browser opens (`/api/runs/stream` and `/api/run/stream?path=NAME`), as a page would.
Printed per pair: the grow's wall time and its own `train/tokens_per_s` (the median over its evals, from
run.sqlite); at the end the ratios watched/bare of the medians. The target: under 3% slower.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, say  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# a client that follows the streams a page would, counting the events; it prints the count when stopped
CLIENT = r"""
import http.client, signal, sys, threading, time
port, name = int(sys.argv[1]), sys.argv[2]
count = [0]
def follow(target):
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", target)
            r = conn.getresponse()
            if r.status != 200:
                r.read(); conn.close(); time.sleep(0.2); continue  # the run does not exist yet
            for line in r:
                if line.startswith(b"event: "):
                    count[0] += 1
        except OSError:
            time.sleep(0.2)
def stop(*_):
    print(count[0], flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
for t in ("/api/runs/stream", f"/api/run/stream?path={name}"):
    threading.Thread(target=follow, args=(t,), daemon=True).start()
while True:
    time.sleep(1)
"""


def conditions(steps: int, folder: Path) -> Path:
    c = tomllib.loads((ROOT / "examples" / "induction.toml").read_text())
    c["schedule"].update(steps=steps, eval_every=10, warmup_steps=min(100, steps // 10))
    c["checkpoints"] = {"log_until": 8, "every": max(steps // 3, 1)}
    path = folder / "bench-serve.toml"
    path.write_text(tomli_w.dumps(c))
    return path


def grow(cond: Path, runs: Path, name: str) -> tuple[float, float]:
    """(wall seconds, median train/tokens_per_s) of `seedbed grow` in its own process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "seedbed", "grow", str(cond), "--runs-dir", str(runs), "--name", name, "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    db = sqlite3.connect(f"file:{runs / name / 'run.sqlite'}?mode=ro", uri=True)
    rates = [v for (v,) in db.execute("SELECT value FROM metrics WHERE name = 'train/tokens_per_s' ORDER BY step")][1:]
    db.close()
    return wall, statistics.median(rates)


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop(proc: subprocess.Popen) -> str:
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watched(cond: Path, runs: Path, name: str) -> tuple[float, float, int, float]:
    """(wall, tokens/s, events streamed, CPU seconds the server and client used while the run grew)."""
    server = start([sys.executable, "-m", "seedbed", "serve", str(runs), "--port", "0"])
    try:
        line = server.stdout.readline()
        port = int(re.search(r":(\d+)/", line).group(1))
        client = start([sys.executable, "-c", CLIENT, str(port), name])
        try:
            time.sleep(5)  # the server has imported everything and the client follows before growth starts
            before = cpu_seconds(server.pid) + cpu_seconds(client.pid)
            wall, rate = grow(cond, runs, name)
            spent = cpu_seconds(server.pid) + cpu_seconds(client.pid) - before
        finally:
            events = int(stop(client).strip() or 0)
    finally:
        stop(server)
    return wall, rate, events, spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    say(f"load average at start: {load()}")
    bare, seen = [], []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        runs = Path(tmp) / "runs"
        runs.mkdir()
        cond = conditions(args.steps, Path(tmp))
        for i in range(args.repeats):  # interleaved, so drifting load hits both alike
            bare.append(grow(cond, runs, f"bare-{i}"))
            say(f"pair {i}: bare    {bare[-1][0]:6.1f} s  {bare[-1][1]:9,.0f} tokens/s   (load {load()})")
            wall, rate, events, spent = watched(cond, runs, f"watched-{i}")
            seen.append((wall, rate))
            say(f"pair {i}: watched {wall:6.1f} s  {rate:9,.0f} tokens/s   {events} events streamed; server + client used "
                f"{spent:.2f} CPU s = {spent / wall:.1%} of one core (load {load()})")
    wall_ratio = statistics.median(w for w, _ in seen) / statistics.median(w for w, _ in bare)
    rate_ratio = statistics.median(r for _, r in bare) / statistics.median(r for _, r in seen)
    say(f"watched / bare, medians: wall time {wall_ratio:.3f}; training speed cost {rate_ratio:.3f} "
        f"(target < 1.03); load average at end: {load()}")


if __name__ == "__main__":
    main()
