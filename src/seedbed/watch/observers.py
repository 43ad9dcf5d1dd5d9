"""Observers: functions of (model, step) -> named scalars, called while a model grows.

Each one is cheap (one small forward pass at most) because growth calls it on a
schedule, and what it costs is counted against training time. Everything an
observer measures uses fixed held-out inputs, so two observations differ only
because the model changed. Observers never touch the global RNG, so watching a
run does not change the weights it grows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedbed.model import Transformer, evaluating
from seedbed.read.scores import default_length, pattern_scores
from seedbed.soil import SoilBase
from seedbed.soil.base import Batch

# Olsson et al. 2022 define the in-context-learning score on 512-token contexts as
# loss(token 500) − loss(token 50); here the same fractions of whatever context we have.
ICL_EARLY, ICL_LATE = 50 / 512, 500 / 512
MAX_POSITION_SERIES = 64  # longer contexts are logged in this many equal bins
HELD_OUT_INDEX = 10_000  # a held-out batch index that evaluation never uses


def icl_positions(seq_len: int) -> tuple[int, int]:
    """The early and late positions of the in-context-learning score for this context length."""
    early = max(1, round(ICL_EARLY * seq_len))
    late = max(early + 1, min(seq_len - 1, round(ICL_LATE * seq_len)))
    return early, late


class HeldOutLosses:
    """Loss by token position, loss on the soil's answer targets, and the ICL score.

    One forward pass over a fixed held-out batch. `watch/loss_at/NNNN` is the mean
    loss at position NNNN (or the bin starting there, for long contexts);
    `watch/answer_loss` is the loss on the targets the task is about (for repeated
    blocks: the repeated half); `watch/icl_score` is late minus early loss, so it
    goes negative as the model learns to use its context.
    """

    def __init__(self, soil: SoilBase | None = None, batch_size: int = 64, batch: Batch | None = None) -> None:
        """On the soil's fixed held-out batch, or on `batch` (a series read from elsewhere has no soil)."""
        if batch is None:
            assert soil is not None, "give a soil or a batch"
            batch = soil.eval_batch(HELD_OUT_INDEX, batch_size)
        self.batch = batch
        self.seq_len = self.batch.targets.shape[1]
        self.early, self.late = icl_positions(self.seq_len)
        n_bins = min(self.seq_len, MAX_POSITION_SERIES)
        self.bin_starts = [math.floor(i * self.seq_len / n_bins) for i in range(n_bins)]

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:  # noqa: ARG002
        device = next(model.parameters()).device
        batch = self.batch.to(device)
        with evaluating(model):
            logits = model(batch.inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none").view(batch.targets.shape)
        by_position = loss.mean(dim=0).cpu()
        out = {"watch/icl_score": float(by_position[self.late] - by_position[self.early])}
        if batch.answer.any():
            out["watch/answer_loss"] = float(loss[batch.answer].mean())
        ends = self.bin_starts[1:] + [self.seq_len]
        for start, end in zip(self.bin_starts, ends):
            out[f"watch/loss_at/{start:04d}"] = float(by_position[start:end].mean())
        return out


class HeadScores:
    """Previous-token and induction score of every head, on fixed repeated random tokens.

    Named `watch/previous_token/L0H3` and `watch/induction/L1H2`; definitions in
    `seedbed.read.scores`. One forward pass that caches only the attention patterns.
    """

    def __init__(self, bos: int | None, seed: int = 0, batch: int = 16) -> None:
        self.bos, self.seed, self.batch = bos, seed, batch

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:  # noqa: ARG002
        assert isinstance(model, Transformer)
        scores = pattern_scores(model, batch=self.batch, seed=self.seed, bos=self.bos)
        out: dict[str, float] = {}
        for kind in ("previous_token", "induction"):
            out.update(_per_head(f"watch/{kind}", scores[kind]))
        return out


def _per_head(prefix: str, scores: Tensor) -> dict[str, float]:
    return {f"{prefix}/L{layer}H{head}": float(scores[layer, head]) for layer in range(scores.shape[0]) for head in range(scores.shape[1])}


@torch.no_grad()
def weight_norm(model: nn.Module, step: int) -> dict[str, float]:  # noqa: ARG001
    """The total L2 norm of every parameter: weight decay's target, grokking's clean-up signal."""
    squares = sum(float(p.double().square().sum()) for p in model.parameters())
    return {"watch/weight_norm": math.sqrt(squares)}


def default_observers(model: Transformer, soil: SoilBase) -> list:
    """The built-in observers that apply to this model and soil."""
    observers: list = [HeldOutLosses(soil), weight_norm]
    if default_length(model, soil.bos) >= 2:  # room for two copies of a repeated sequence
        observers.append(HeadScores(soil.bos))
    return observers
