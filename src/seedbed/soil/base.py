"""What every soil provides: deterministic batches from (seed, cursor).

A batch is a function of the seed and a cursor alone, never of hidden RNG state,
so a resumed run (or another rank under data parallelism) gets exactly the same
tokens by asking for the same cursor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class Batch:
    """`tokens[:, :-1]` is the input, `tokens[:, 1:]` the target at each position.

    `answer[b, t]` marks the targets that the task is about (the sum's digits, the
    repeated copy of a block, `c` in `a + b = c`); the objective may restrict the
    loss to them.
    """

    tokens: Tensor  # [batch, n_ctx + 1] int64
    answer: Tensor  # [batch, n_ctx] bool

    @property
    def inputs(self) -> Tensor:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> Tensor:
        return self.tokens[:, 1:]

    def rows(self, index: slice | Tensor) -> "Batch":
        return Batch(self.tokens[index], self.answer[index])

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.tokens.to(device, non_blocking=True), self.answer.to(device, non_blocking=True))


# Streams keep train, held-out and any other randomness of a soil independent.
TRAIN, EVAL, SPLIT = 0, 1, 2


def generator(seed: int, stream: int, index: int = 0) -> torch.Generator:
    """A torch RNG that depends only on (seed, stream, index), well mixed."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


class SoilBase:
    """Base class of the soils; subclasses set `d_vocab` and `seq_len` and make batches."""

    name: str = "soil"
    d_vocab: int
    seq_len: int  # input positions per sequence (the model's n_ctx must be at least this)
    finite_train: int | None = None  # number of training examples, for soils with a fixed train set
    eval_size: int | None = None  # number of held-out examples, for soils with a fixed test set
    bos: int | None = None  # the token every sequence starts with, if the soil has one

    def train_batch(self, cursor: int, batch_size: int) -> Batch:
        raise NotImplementedError

    def eval_batch(self, index: int, batch_size: int) -> Batch:
        """Held-out data: never in any training batch (a disjoint split or a disjoint RNG stream)."""
        raise NotImplementedError

    def eval_metrics(self, per_token_loss: Tensor, correct: Tensor, batch: Batch) -> dict[str, float]:
        """Task-specific held-out metrics beyond loss and accuracy (e.g. per-digit loss)."""
        return {}

    def decode(self, tokens: list[int] | Tensor) -> str:
        """Tokens as text, for people."""
        return " ".join(str(int(t)) for t in tokens)

    def artifacts(self) -> dict[str, Any]:
        """JSON-able facts the run must keep to be read elsewhere (e.g. the tokenizer)."""
        return {}
