"""Inside a run at any checkpoint: attention patterns on a held-out example and head scores, from `seedbed.read`.

Computed on demand, once per (run, step, checkpoint hash): a checkpoint never changes under
its hash, so the answer is cached for as long as the server runs (a few models at most).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from seedbed.errors import SeedbedError
from seedbed.read import load
from seedbed.read.scores import (
    default_length,
    pattern_scores,
    patterns,
    repeated_tokens,
)
from seedbed.serve.data import checkpoint_records, number
from seedbed.watch.observers import HELD_OUT_INDEX

MAX_TOKENS = 64  # of the held-out example shown: a pattern is MAX_TOKENS² numbers per head
MAX_HEADS = 256
KINDS = ("previous_token", "induction", "duplicate_token")
CACHED = 16


class Inside:
    """What the inside view shows at a checkpoint, computed once and kept (least recently used goes first)."""

    def __init__(self) -> None:
        self.cache: OrderedDict[tuple, dict] = OrderedDict()
        self.lock = threading.Lock()  # one computation at a time: the server must not compete with growth

    def at(self, path: Path, step: int) -> dict:
        records = {r.step: r for r in checkpoint_records(path)}
        if step not in records:
            raise SeedbedError(f"no checkpoint at step {step}")
        key = (str(path), step, records[step].sha256)
        with self.lock:
            if key not in self.cache:
                self.cache[key] = _compute(path, step)
                while len(self.cache) > CACHED:
                    self.cache.popitem(last=False)
            self.cache.move_to_end(key)
            return self.cache[key]

    def scores_over_training(self, path: Path, steps: list[int]) -> dict:
        """Each head's scores at each of `steps` (checkpoints), from the cache or computed."""
        out: dict[str, Any] = {"steps": [], **{k: [] for k in KINDS}}
        for step in steps:
            found = self.at(path, step)
            out["steps"].append(step)
            for k in KINDS:
                out[k].append(found["scores"][k])
        return out


def _compute(path: Path, step: int) -> dict:
    if (path / "run.sqlite-journal").exists():  # a write under way (or cut short): load() must not be the one to undo it
        raise SeedbedError("run.sqlite is being written: try again in a moment")
    grown = load(path, step)
    model, cfg = grown.model, grown.model.cfg
    if cfg.n_layers * cfg.n_heads > MAX_HEADS:
        raise SeedbedError(f"{cfg.n_layers * cfg.n_heads} heads are more than the page shows ({MAX_HEADS})")
    bos = grown.soil.bos if grown.soil is not None else None
    tokens = _example(grown, bos)
    with torch.no_grad():
        pattern = patterns(model, tokens[None])[:, 0].float()  # [layer, head, query, key]
        scores = pattern_scores(model, bos=bos) if default_length(model, bos) >= 2 else {}
    return {
        "step": step,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "tokens": [_label(grown, t) for t in tokens.tolist()],
        "patterns": [[[[round(float(v), 4) for v in row] for row in pattern[l, h]] for h in range(cfg.n_heads)]
                     for l in range(cfg.n_layers)],
        "scores": {k: [[number(float(v)) for v in scores[k][l]] for l in range(cfg.n_layers)] if k in scores else None
                   for k in KINDS},
    }


def _example(grown, bos: int | None) -> torch.Tensor:
    """A held-out example: the soil's (a batch growth never trains on), else repeated random tokens."""
    n_ctx = grown.model.cfg.n_ctx
    if grown.soil is not None:
        return grown.soil.eval_batch(HELD_OUT_INDEX, 1).inputs[0][: min(n_ctx, MAX_TOKENS)]
    length = max(1, min(default_length(grown.model, bos), (MAX_TOKENS - 1) // 2))
    return repeated_tokens(grown.model.cfg.d_vocab, length, batch=1, seed=HELD_OUT_INDEX, bos=bos)[0]


def _label(grown, token: int) -> str:
    """A token as the page shows it: its text when it has printable text, else its id."""
    try:
        text = grown.decode([token])
    except (SeedbedError, KeyError, IndexError, ValueError, TypeError):
        text = ""
    return text[:12] if text and text.isprintable() and text.strip() else f"#{token}"
