"""Draw a run's training loss as a small self-contained SVG (the README's picture).

Usage: python docs/figures/loss_curve.py runs/induction-tiny docs/figures/induction-tiny-loss.svg
"""

from __future__ import annotations

import sys
from pathlib import Path

from seedbed.run import Run


def smooth(values: list[float], k: int = 25) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - k] if i >= k else 0.0)
        out.append(acc / min(i + 1, k))
    return out


def svg(run: Run, width: int = 640, height: int = 260, pad: int = 44) -> str:
    steps, losses = zip(*run.metric("train/loss"))
    evals = run.metric("eval/loss")
    losses = smooth(list(losses))
    top, x_max = max(losses) * 1.05, steps[-1]
    X = lambda s: pad + (width - 2 * pad) * s / x_max  # noqa: E731
    Y = lambda v: height - pad - (height - 2 * pad) * v / top  # noqa: E731
    line = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in zip(steps, losses))
    dots = "".join(f'<circle cx="{X(s):.1f}" cy="{Y(v):.1f}" r="3" fill="#c0392b"/>' for s, v in evals)
    ticks = "".join(
        f'<text x="{X(s):.0f}" y="{height - pad + 16}" font-size="11" text-anchor="middle">{s:,}</text>'
        for s in range(0, x_max + 1, max(1, x_max // 6 // 500 * 500 or x_max // 6))
    )
    yticks = "".join(
        f'<text x="{pad - 6}" y="{Y(v) + 4:.0f}" font-size="11" text-anchor="end">{v:g}</text>' for v in range(0, int(top) + 1)
    )
    return f"""<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20" font-size="14">{run.name}: training loss (line) and held-out loss (dots), nats/token</text>
<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#444"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#444"/>
{ticks}{yticks}
<text x="{width / 2}" y="{height - 8}" font-size="12" text-anchor="middle">step</text>
<polyline points="{line}" fill="none" stroke="#2c7fb8" stroke-width="2"/>
{dots}
</svg>
"""


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(svg(Run.open(sys.argv[1], readonly=True)))
