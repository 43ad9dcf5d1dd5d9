"""How many threads a process computes with, and how its idle threads wait.

Why this matters on a shared machine (measured by `bench/load.py`):
- `os.cpu_count()` counts the machine's CPUs, not the ones this process may use: a CPU
  affinity mask or a cgroup quota (containers, CI) can give it fewer. More threads than
  usable cores only queue behind each other.
- torch's CPU build parallelises with GNU OpenMP (libgomp). A libgomp thread that finishes
  its share of an operation *spins* at the barrier (busy-waits, 300,000 iterations by default)
  before it sleeps, hoping its siblings finish soon. When another job holds a core, the sibling
  it waits for is descheduled and the spinning burns whole time slices that the other job
  needed. Small models like seedbed's run thousands of short parallel regions per second, so
  under load most of the CPU time goes to waiting.

  Measured with bench/load.py (induction trial, tiny; 2 cores; 2-process competing load), wall / CPU
  seconds: libgomp's default spin 19.3 / 29.6 quiet, 226 / 213 loaded; never spinning
  (OMP_WAIT_POLICY=PASSIVE) 30.5 / 33 quiet (the wake-ups cost 1.6x), 70 / 39 loaded; a short spin
  (GOMP_SPINCOUNT=10000) 20.8 / 29.3 quiet, 54 / 37 loaded. So seedbed spins briefly: nearly the
  quiet speed, and a quarter of the wall time and a sixth of the CPU under load.

The thread count is a property of the machine, never of its momentary load: a thread count
that followed the load would change the order of floating-point sums between runs, and with
it the promise of bit-identical weights.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

SPIN_COUNT = "10000"  # iterations an idle OpenMP thread spins before it sleeps (libgomp's default: 300,000)
# The user's own settings win: any of these in the environment means "leave waiting alone".
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota is not None else cores)


def _cgroup_quota(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """`cpu.max` holds "QUOTA PERIOD" (or "max PERIOD"): QUOTA/PERIOD CPUs' worth of time, rounded up."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def quiet_waiting() -> bool:
    """Ask OpenMP's idle threads to spin only briefly before they sleep, unless the user chose otherwise.

    Takes effect only if torch (and so libgomp) is not yet loaded in this process; child
    processes (trial workers, torchrun ranks) inherit it through the environment.
    Returns whether this call set it.
    """
    if any(k in os.environ for k in WAIT_SETTINGS):
        return False
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True


def threads_for(share: int = 1) -> int:
    """Threads for one of `share` processes splitting this machine's usable cores evenly."""
    return max(1, available_cores() // max(1, share))


def settle_process() -> None:
    """Before torch loads: idle threads sleep soon, and OpenMP uses the usable cores, not the machine's count.

    Called first by the command line; an OMP_NUM_THREADS the user set is kept.
    """
    quiet_waiting()
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cores()))


def use_threads(share: int = 1) -> int:
    """Set torch's threads for one of `share` processes; never more than an OMP_NUM_THREADS the user set."""
    import torch

    n = threads_for(share)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        n = min(n, max(1, int(os.environ["OMP_NUM_THREADS"])))
    torch.set_num_threads(n)
    return n
