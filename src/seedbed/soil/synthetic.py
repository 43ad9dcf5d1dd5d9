"""Algorithmic soils: tasks whose solutions we understand, so we can look for them inside."""

from __future__ import annotations

import torch
from torch import Tensor

from seedbed.conditions import DigitAddition, ModularArithmetic, RepeatedBlocks
from seedbed.errors import SeedbedError
from seedbed.soil.base import EVAL, SPLIT, TRAIN, Batch, SoilBase, generator

BOS = 0


class RepeatedBlocksSoil(SoilBase):
    """`BOS, prefix (0..prefix_max random tokens), block (block_min..block_max), block, block…`

    Every target inside a repeat can be predicted only by looking back one block
    length and copying; because that length varies per sequence, the model must
    find the earlier copy by content (an induction head), not by position.
    `answer` marks those repeated targets.
    """

    name = "repeated-blocks"
    bos = BOS

    def __init__(self, s: RepeatedBlocks, seed: int, n_ctx: int) -> None:
        if 2 * s.block_max > n_ctx:
            raise SeedbedError(
                f"soil.block_max={s.block_max} cannot repeat within n_ctx={n_ctx}: "
                f"set block_max <= {n_ctx // 2} or n_ctx >= {2 * s.block_max}"
            )
        self.s, self.seed, self.seq_len, self.d_vocab = s, seed, n_ctx, s.vocab_size

    def _make(self, g: torch.Generator, batch_size: int) -> Batch:
        s, total = self.s, self.seq_len + 1
        lengths = torch.randint(s.block_min, s.block_max + 1, (batch_size, 1), generator=g)
        room = torch.clamp(self.seq_len - 2 * lengths, max=s.prefix_max)  # keep two copies in view
        prefix = (torch.rand((batch_size, 1), generator=g) * (room + 1)).long()
        fresh = torch.randint(1, s.vocab_size, (batch_size, total), generator=g)
        t = torch.arange(total).unsqueeze(0)
        start = 1 + prefix  # where the first copy of the block begins
        src = torch.where(t < start + lengths, t, start + (t - start) % lengths)
        tokens = fresh.gather(1, src)
        tokens[:, 0] = BOS
        answer = t[:, 1:] >= start + lengths  # targets inside a repeat
        return Batch(tokens, answer.expand(batch_size, -1).contiguous())

    def train_batch(self, cursor: int, batch_size: int) -> Batch:
        return self._make(generator(self.seed, TRAIN, cursor), batch_size)

    def eval_batch(self, index: int, batch_size: int) -> Batch:
        return self._make(generator(self.seed, EVAL, index), batch_size)


class ModularArithmeticSoil(SoilBase):
    """`a b = c` with c = a op b (mod p); token p is "=". A fixed split of all pairs.

    The split is drawn from the seed once, so the train set is the same set of
    pairs for the whole run (memorisation and grokking need a fixed train set).
    """

    name = "modular-arithmetic"
    seq_len = 3

    def __init__(self, s: ModularArithmetic, seed: int) -> None:
        self.s, self.seed, self.d_vocab = s, seed, s.p + 1
        p = s.p
        a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
        a, b = a.flatten(), b.flatten()
        if s.operation == "div":  # division by b is multiplication by b^(p-2) (Fermat; p prime)
            keep = b != 0
            a, b = a[keep], b[keep]
        c = self.apply(a, b)
        eq = torch.full_like(a, p)
        every = torch.stack([a, b, eq, c], dim=1)
        order = torch.randperm(len(every), generator=generator(seed, SPLIT))
        n_train = max(1, min(len(every) - 1, round(s.train_fraction * len(every))))
        self.train, self.test = every[order[:n_train]], every[order[n_train:]]
        self.finite_train, self.eval_size = n_train, len(self.test)

    def apply(self, a: Tensor, b: Tensor) -> Tensor:
        p, op = self.s.p, self.s.operation
        if op == "add":
            return (a + b) % p
        if op == "sub":
            return (a - b) % p
        if op == "mul":
            return (a * b) % p
        inv = torch.tensor([pow(int(x), p - 2, p) for x in range(p)])
        return (a * inv[b]) % p

    def _batch(self, rows: Tensor) -> Batch:
        answer = torch.zeros(len(rows), self.seq_len, dtype=torch.bool)
        answer[:, -1] = True  # only c is the answer
        return Batch(rows, answer)

    def train_batch(self, cursor: int, batch_size: int) -> Batch:
        if batch_size >= len(self.train):  # full batch: the whole train set, always in the same order
            return self._batch(self.train)
        pick = torch.randperm(len(self.train), generator=generator(self.seed, TRAIN, cursor))[:batch_size]
        return self._batch(self.train[pick])

    def eval_batch(self, index: int, batch_size: int) -> Batch:
        """Chunk `index` of the held-out pairs (wrapping around)."""
        start = (index * batch_size) % len(self.test)
        rows = torch.cat([self.test[start:], self.test[:start]])[:batch_size]
        return self._batch(rows)

    def decode(self, tokens: list[int] | Tensor) -> str:
        sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[self.s.operation]
        words = ["=" if int(t) == self.s.p else str(int(t)) for t in tokens]
        if len(words) >= 2:
            words.insert(1, sym)
        return " ".join(words)


PLUS, EQUALS = 10, 11


class DigitAdditionSoil(SoilBase):
    """`a + b = c`, digits as tokens (0-9), `+` = 10, `=` = 11; fresh random sums each batch.

    The answer has n+1 digits, zero-padded, most significant first unless
    `reverse_answer`. Held-out sums come from a separate RNG stream.
    """

    name = "digit-addition"
    d_vocab = 12

    def __init__(self, s: DigitAddition, seed: int) -> None:
        self.s, self.seed, n = s, seed, s.n_digits
        self.seq_len = 3 * n + 2  # a(n) + b(n) = c(n+1), minus the last token which is only a target
        self.answer_from = 2 * n + 1  # first target position holding a digit of c

    def _make(self, g: torch.Generator, batch_size: int) -> Batch:
        n = self.s.n_digits
        a = torch.randint(0, 10, (batch_size, n), generator=g)
        b = torch.randint(0, 10, (batch_size, n), generator=g)
        c = torch.zeros(batch_size, n + 1, dtype=torch.long)
        carry = torch.zeros(batch_size, dtype=torch.long)
        for i in range(n - 1, -1, -1):  # schoolbook addition, least significant first
            total = a[:, i] + b[:, i] + carry
            c[:, i + 1], carry = total % 10, total // 10
        c[:, 0] = carry
        if self.s.reverse_answer:
            c = c.flip(1)
        col = lambda v: torch.full((batch_size, 1), v, dtype=torch.long)  # noqa: E731
        tokens = torch.cat([a, col(PLUS), b, col(EQUALS), c], dim=1)
        answer = torch.zeros(batch_size, self.seq_len, dtype=torch.bool)
        answer[:, self.answer_from :] = True
        return Batch(tokens, answer)

    def train_batch(self, cursor: int, batch_size: int) -> Batch:
        return self._make(generator(self.seed, TRAIN, cursor), batch_size)

    def eval_batch(self, index: int, batch_size: int) -> Batch:
        return self._make(generator(self.seed, EVAL, index), batch_size)

    def digit_place(self, k: int) -> int:
        """Place value (0 = units) of the k-th answer digit as written."""
        n1 = self.s.n_digits + 1
        return k if self.s.reverse_answer else n1 - 1 - k

    def eval_metrics(self, per_token_loss: Tensor, correct: Tensor, batch: Batch) -> dict[str, float]:
        """Per-digit loss and accuracy (by place value), and exact match of the whole sum."""
        loss, ok = per_token_loss[:, self.answer_from :], correct[:, self.answer_from :]
        out = {"exact_match": ok.all(dim=1).float().mean().item()}
        for k in range(loss.shape[1]):
            place = self.digit_place(k)
            out[f"digit{place}_loss"] = loss[:, k].mean().item()
            out[f"digit{place}_accuracy"] = ok[:, k].float().mean().item()
        return out

    def decode(self, tokens: list[int] | Tensor) -> str:
        return "".join({PLUS: "+", EQUALS: "="}.get(int(t), str(int(t))) for t in tokens)
