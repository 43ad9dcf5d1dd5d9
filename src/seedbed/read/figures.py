"""Pictures of what was read: attention patterns as heat maps.

matplotlib's object API (`Figure`), not pyplot: no display is needed, and importing this
never changes the backend a notebook chose.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor

from seedbed.files import write_atomic


def attention_figure(pattern: Tensor, labels: list[str], title: str) -> Figure:
    """One head's pattern [query, key] with the tokens on both axes (queries down, keys across)."""
    n = pattern.shape[0]
    size = min(9.0, 2.0 + 0.16 * n)
    fig = Figure(figsize=(size + 0.8, size), dpi=110)
    ax = fig.subplots()
    im = ax.imshow(pattern.float().cpu().numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ticks = range(n)
    fontsize = 7 if n <= 48 else 5
    ax.set_xticks(ticks, labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, labels, fontsize=fontsize)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention")
    fig.tight_layout()
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_atomic(path, buf.getvalue())
    return path
