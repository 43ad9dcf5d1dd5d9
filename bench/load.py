"""The main job on a shared machine: wall and CPU time with and without a competing 2-process load.

    python bench/load.py                  # induction trial at tiny scale (a few minutes)
    python bench/load.py --scale small    # the README's main job (long when loaded: ~25 min before the fix)

Four measurements of `seedbed trial induction --scale S` (a fresh folder each time, the same seed):

| row | environment |
| --- | --- |
| before, quiet / loaded | `GOMP_SPINCOUNT=300000`: libgomp's own default (idle threads spin before they sleep); seedbed leaves waiting alone when it sees this |
| after, quiet / loaded | seedbed's default: `GOMP_SPINCOUNT=10000` (idle threads spin briefly, then sleep), threads = usable cores |

The competing load is two processes, each a one-thread torch training loop of a small MLP
(like another job's two workers), started before the measurement and killed after it.
Wall time is the trial's own; CPU time is the trial's user+system time, all its processes
(from wait4). The figures to compare are the ratios printed at the end, measured in one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, say  # noqa: E402

COMPETITOR = """
import torch
torch.set_num_threads(1)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
opt = torch.optim.AdamW(net.parameters())
x = torch.randn(64, 256)
while True:
    opt.zero_grad()
    net(x).square().mean().backward()
    opt.step()
"""

BEFORE = {"GOMP_SPINCOUNT": "300000"}  # libgomp's documented default spin count: the old behaviour
AFTER: dict[str, str] = {}


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    return {**env, **extra}


def run_trial(scale: str, extra: dict[str, str], folder: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the trial and all its children)."""
    cmd = [sys.executable, "-m", "seedbed", "trial", "induction", "--scale", scale, "--out", str(folder), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=clean_env(extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"the trial failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def competitors(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", COMPETITOR], env=clean_env({})) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--load-processes", type=int, default=2)
    args = ap.parse_args()
    results: dict[tuple[str, str], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="seedbed-bench-load-") as tmp:
        for loaded in (False, True):
            others = competitors(args.load_processes) if loaded else []
            try:
                time.sleep(2 if loaded else 0)  # let the load start
                for label, extra in (("before", BEFORE), ("after", AFTER)):
                    key = (label, "loaded" if loaded else "quiet")
                    say(f"{label:6} {key[1]:6} … (load average {load()})")
                    results[key] = run_trial(args.scale, extra, Path(tmp) / f"{label}-{key[1]}")
                    say(f"{label:6} {key[1]:6} wall {results[key][0]:7.1f} s   CPU {results[key][1]:7.1f} s")
            finally:
                for p in others:
                    p.kill()
                    p.wait()
    say(f"\ninduction trial, scale {args.scale}, {args.load_processes}-process competing load; load average now {load()}")
    say("| setting | quiet wall | quiet CPU | loaded wall | loaded CPU | loaded/quiet wall | loaded/quiet CPU |")
    say("| --- | --- | --- | --- | --- | --- | --- |")
    for label in ("before", "after"):
        qw, qc = results[(label, "quiet")]
        lw, lc = results[(label, "loaded")]
        say(f"| {label} | {qw:.1f} s | {qc:.1f} s | {lw:.1f} s | {lc:.1f} s | {lw / qw:.2f}× | {lc / qc:.2f}× |")
    bw, bc = results[("before", "loaded")]
    aw, ac = results[("after", "loaded")]
    qbw, qaw = results[("before", "quiet")][0], results[("after", "quiet")][0]
    say(f"after/before: quiet wall {qaw / qbw:.2f}×; loaded wall {aw / bw:.2f}×, loaded CPU {ac / bc:.2f}×")


if __name__ == "__main__":
    main()
