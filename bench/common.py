"""What every benchmark script prints with: the load average and unbuffered lines."""

from __future__ import annotations

import os


def load() -> str:
    """The 1-, 5- and 15-minute load averages: how busy the shared machine was."""
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def say(*a) -> None:
    print(*a, flush=True)
