"""Ray's overhead on one machine: the same sweep of 8 tiny runs through the local process pool and through Ray.

    python bench/sweep.py                 # 8 runs of 300 steps, twice each way, interleaved (a few minutes on 2 cores)
    python bench/sweep.py --steps 100 --repeats 1

A Ray cluster is started here first (one node, as many CPUs as the pool has processes, in a temp dir of its own,
stopped precisely at the end), and its start is not timed: a cluster is started once and serves many sweeps.
Each measurement is `seedbed.sweep.run_sweep` into a new folder — plan, grow the 8 runs, gather the table and the
report — so it counts what differs: spawning pool processes vs. connecting to Ray and its workers (each imports
torch on its first task), and handing out the runs. Prints each wall time, the ratio Ray / pool (best of the
repeats, and median), and the load average beside each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import load, say

from seedbed.threads import available_cores, settle_process


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    settle_process()  # as the command line does, before torch loads

    from conftest import tiny_dict, write_toml
    from rich.console import Console
    from test_sweep import LocalCluster

    from seedbed.sweep import run_sweep

    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    conditions = write_toml(work / "tiny.toml", tiny_dict(schedule={"steps": args.steps, "eval_every": 50},
                                                          checkpoints={"log_until": 8, "every": 100}))
    seeds = f"0-{args.runs - 1}"
    cores = available_cores()
    say(f"{args.runs} runs of {args.steps} steps (tiny: 2 layers, d_model 16), {cores} usable cores; load {load()}")
    t0 = time.perf_counter()
    cluster = LocalCluster(head_cpus=cores, node_cpus=0).start()
    say(f"ray cluster started in {time.perf_counter() - t0:.1f}s (not timed below) at {cluster.address}")
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    times: dict[str, list[float]] = {"pool": [], "ray": []}
    try:
        for i in range(args.repeats):
            for how in ("pool", "ray"):
                t = time.perf_counter()
                run_sweep(conditions, seeds, [], out=work / f"{how}-{i}", ray=cluster.address if how == "ray" else None,
                          console=quiet)
                times[how].append(time.perf_counter() - t)
                say(f"  {how:4s} #{i}: {times[how][-1]:6.1f}s   load {load()}")
    finally:
        cluster.stop()
    best = min(times["ray"]) / min(times["pool"])
    median = statistics.median(times["ray"]) / statistics.median(times["pool"])
    say(f"ray / pool wall time: {best:.2f} (best of {args.repeats}), {median:.2f} (median); Ray's overhead {best - 1:+.0%}"
        f" (target: under +20%); load {load()}")


if __name__ == "__main__":
    main()
