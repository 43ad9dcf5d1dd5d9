"""One layer's attention patterns on one sequence, as an object a notebook shows.

`attention_pattern(g, layer, head)` runs the model once, caching only that layer's
`hook_pattern`, and keeps the pattern with the tokens as text; in Jupyter it shows as
a heat map per head (queries down, keys across, each cell's weight on hover), and
`.figure()` draws the same with matplotlib, as `seedbed read` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torch import Tensor

from seedbed.errors import SeedbedError
from seedbed.hooks import run_with_cache
from seedbed.model import device_of, evaluating
from seedbed.read import html
from seedbed.read.figures import attention_figure
from seedbed.read.load import Grown
from seedbed.read.summary import example_tokens, token_labels


@dataclass
class AttentionPattern:
    """Attention weights [head, query, key] of `heads` ((layer, head) each) on one sequence of tokens `labels`."""

    pattern: Tensor
    heads: list[tuple[int, int]]
    labels: list[str]
    step: int | None = None
    run: str | None = None

    def figure(self, i: int = 0) -> Figure:
        """The i-th head's pattern as a matplotlib figure (the picture `seedbed read` saves)."""
        l, h = self.heads[i]
        return attention_figure(self.pattern[i], self.labels, f"L{l}H{h}" + html.at(self.run, self.step))

    def _repr_html_(self) -> str:
        n = len(self.labels)
        maps = []
        for (l, h), p in zip(self.heads, self.pattern):
            hover = lambda i, j, v: f"query {i} {self.labels[i]!r} → key {j} {self.labels[j]!r}: {v:.3f}"
            svg = html.heatmap(p.tolist(), self.labels, self.labels, 0.0, 1.0, hover=hover)
            maps.append(f'<div style="display:inline-block;vertical-align:top;margin:0 14px 8px 0">'
                        f'<div style="font-weight:600">L{l}H{h}</div>{svg}</div>')
        note = html.cut_note(n, n) + "Queries down, keys across; each cell's weight on hover."
        title = f"Attention, layer {self.heads[0][0]}" if len({l for l, _ in self.heads}) == 1 else "Attention"
        return html.box(title + html.at(self.run, self.step), "".join(maps) + html.scale_bar(0.0, 1.0, "attention"), note)


def attention_pattern(grown: Grown, layer: int, head: int | None = None, tokens: Tensor | None = None, row: int = 0) -> AttentionPattern:
    """The attention of `head` (every head of the layer if None) in `layer` on row `row` of `tokens`.

    `tokens`: [pos] or [batch, pos] token ids; by default the example `seedbed read` draws (held-out
    data from the soil, or repeated random tokens when the run has no soil to hand).
    """
    cfg = grown.model.cfg
    if not 0 <= layer < cfg.n_layers:
        raise SeedbedError(f"layer {layer} does not exist: this model has layers 0–{cfg.n_layers - 1}")
    if head is not None and not 0 <= head < cfg.n_heads:
        raise SeedbedError(f"head {head} does not exist: this model has heads 0–{cfg.n_heads - 1} in each layer")
    tokens = example_tokens(grown) if tokens is None else torch.as_tensor(tokens)
    tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
    if tokens.dim() != 2 or not 0 <= row < len(tokens):
        raise SeedbedError(f"tokens of shape {list(tokens.shape)} and row {row}: give [pos] or [batch, pos] token ids and a row of the batch")
    tokens = tokens[row : row + 1].long()
    if not 1 <= tokens.shape[1] <= cfg.n_ctx:
        raise SeedbedError(f"{tokens.shape[1]} tokens: give 1 to n_ctx={cfg.n_ctx} of them")
    if not (0 <= int(tokens.min()) and int(tokens.max()) < cfg.d_vocab):
        raise SeedbedError(f"token ids must be in 0–{cfg.d_vocab - 1} (the model's vocabulary)")
    name = f"blocks.{layer}.attn.hook_pattern"
    with evaluating(grown.model), torch.no_grad():
        _, cache = run_with_cache(grown.model, tokens.to(device_of(grown.model)), [name])
    heads = list(range(cfg.n_heads)) if head is None else [head]
    pattern = cache[name][0, heads].float().cpu()
    return AttentionPattern(pattern, [(layer, h) for h in heads], token_labels(grown, tokens[0]), grown.step, grown.run.name)
