"""Will it fit? Memory estimated from the conditions alone, before anything is allocated.

A size that cannot fit (d_model 1e5, a batch of 1e9) must be a one-line refusal
that names the field, not a crash after the run folder was made, nor the machine
swapping for an hour. The estimate is made from numbers only: no soil is built,
no tensor allocated, no file read.

It is deliberately on the low side (the point is refusing what cannot fit, never
refusing what fits): the weights, their gradients and AdamW's two moments
(4 × 4 bytes a parameter), the activations kept for the backward pass, the
logits, and the soil's own tables (modular arithmetic enumerates all p² pairs).
Attention patterns are not counted: growth uses the fused attention, which never
materialises them. On a GPU the comparison is still with the machine's RAM, since
checkpoints pass through it and host RAM is rarely smaller than the GPU's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from seedbed.errors import SeedbedError

if TYPE_CHECKING:
    from seedbed.conditions import Conditions

MEMORY_ENV = "SEEDBED_MEMORY_BYTES"  # overrides the machine's memory (tests, or a share of a bigger machine)
Purpose = Literal["grow", "read"]

# fields that can make a run too big, each with a modest value: the field whose
# modest value would save the most memory is the one named in the refusal
MODEST: dict[str, int | None] = {
    "architecture.d_model": 64,
    "architecture.n_layers": 2,
    "architecture.n_heads": 4,
    "architecture.d_head": None,  # None: the default (d_model / n_heads)
    "architecture.d_mlp": None,  # None: the default (4 · d_model)
    "architecture.n_ctx": 64,
    "schedule.batch_size": 32,
    "soil.vocab_size": 64,
    "soil.p": 113,
}


@dataclass(frozen=True)
class Sizes:
    """The numbers memory depends on, with the soil's and the defaults' choices filled in."""

    vocab: int  # d_vocab: the soil decides it
    n_ctx: int
    seq: int  # positions per training sequence (<= n_ctx)
    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int  # 0 when attention-only
    batch: int
    data_rows: int  # rows of a fixed data set the soil holds in memory (modular arithmetic), else 0
    tied: bool
    layernorm: bool
    loss_bytes: int  # 4 or 8: the cross-entropy's dtype

    @property
    def params(self) -> int:
        """Exactly the model's parameter count (model.py's Transformer)."""
        D, inner, M = self.d_model, self.n_heads * self.d_head, self.d_mlp
        attn = D * 3 * inner + 3 * inner + inner * D + D
        mlp = (D * M + M + M * D + D) if M else 0
        norms = 2 * D * (2 if M else 1) if self.layernorm else 0
        embeddings = self.vocab * D * (1 if self.tied else 2) + self.n_ctx * D
        return embeddings + self.n_layers * (attn + mlp + norms) + (2 * D if self.layernorm else 0)

    def activation_floats(self, batch: int, patterns: bool) -> int:
        """Floats kept for the backward pass (or cached by a read), per batch of `batch` sequences."""
        per_layer = 4 * self.d_model + 4 * self.n_heads * self.d_head + 2 * self.d_mlp
        if patterns:
            per_layer += self.n_heads * self.seq
        logits = self.vocab * (2 + self.loss_bytes // 4)  # the logits, their gradient, the loss's copy in its dtype
        return batch * self.seq * (self.n_layers * per_layer + 2 * self.d_model + logits)

    def bytes_to(self, purpose: Purpose) -> int:
        """Peak bytes to grow (weights, grads, AdamW moments, activations, data) or to read one sequence."""
        data = 64 * self.data_rows  # 4 int64 tokens a row, the table and its train/test copies
        if purpose == "grow":
            return 16 * self.params + 4 * self.activation_floats(self.batch, patterns=False) + data
        return 8 * self.params + 4 * self.activation_floats(1, patterns=True) + data  # file bytes + model


def sizes(c: Conditions, modest: dict[str, int | None] | None = None) -> Sizes:
    """The Sizes of `c`, with the fields in `modest` replaced by the given values."""
    over = modest or {}
    a, s = c.architecture, c.soil

    def get(name: str, value: int | None) -> int | None:
        return over.get(name, value)

    d_model = get("architecture.d_model", a.d_model)
    n_heads = get("architecture.n_heads", a.n_heads)
    # d_head and d_mlp are filled in from d_model when not given; only given ones are the user's choice
    d_head = get("architecture.d_head", a.d_head if "d_head" in a.model_fields_set else None) or max(1, d_model // n_heads)
    d_mlp = 0 if a.attn_only else get("architecture.d_mlp", a.d_mlp if "d_mlp" in a.model_fields_set else None) or 4 * d_model
    n_ctx = get("architecture.n_ctx", a.n_ctx)
    batch = get("schedule.batch_size", c.schedule.batch_size) or 1
    vocab, seq, data_rows = 256, n_ctx, 0  # text: characters (<= 256 distinct) or bytes
    if s.kind == "repeated-blocks":
        vocab = get("soil.vocab_size", s.vocab_size)
    elif s.kind == "digit-addition":
        vocab, seq = 12, 3 * s.n_digits + 2
    elif s.kind == "modular-arithmetic":
        p = get("soil.p", s.p)
        vocab, seq = p + 1, 3
        data_rows = p * (p - 1) if s.operation == "div" else p * p
        n_train = max(1, min(data_rows - 1, round(s.train_fraction * data_rows)))
        batch = n_train if s.full_batch else min(batch, n_train)
    return Sizes(
        vocab=vocab, n_ctx=n_ctx, seq=min(seq, n_ctx), d_model=d_model, n_layers=get("architecture.n_layers", a.n_layers),
        n_heads=n_heads, d_head=d_head, d_mlp=d_mlp, batch=batch, data_rows=data_rows, tied=a.tied_embeddings,
        layernorm=a.layernorm, loss_bytes=8 if c.objective.loss_dtype == "float64" else 4,
    )


def machine_memory() -> int | None:
    """Bytes of RAM (or $SEEDBED_MEMORY_BYTES); None where the system does not say (then nothing is refused)."""
    given = os.environ.get(MEMORY_ENV)
    if given:
        try:
            return int(float(given))
        except ValueError:
            raise SeedbedError(f"{MEMORY_ENV}={given!r} is not a number of bytes: unset it, or write e.g. 8e9") from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows, or a system without these names
        return None


def check(c: Conditions, source: str = "conditions", purpose: Purpose = "grow") -> None:
    """Refuse conditions that cannot fit in this machine's memory, naming the field to lower."""
    memory = machine_memory()
    need = sizes(c).bytes_to(purpose)
    if memory is None or need <= memory:
        return
    field, value = culprit(c, purpose)
    raise SeedbedError(
        f"{source}: {field}={value} needs about {gigabytes(need)} to {purpose} (this machine has {gigabytes(memory)}): "
        f"lower {field.rsplit('.', 1)[-1]}"
    )


def culprit(c: Conditions, purpose: Purpose) -> tuple[str, int]:
    """The field (and its value) whose modest value would save the most memory."""
    need = sizes(c).bytes_to(purpose)
    saved = {}
    for field, modest in MODEST.items():
        section, key = field.split(".")
        value = getattr(getattr(c, section), key, None)
        if value is not None:  # a field this soil does not have, or left to its default
            saved[field] = need - sizes(c, {field: modest}).bytes_to(purpose)
    field = max(saved, key=saved.__getitem__)
    section, key = field.split(".")
    return field, getattr(getattr(c, section), key)


def gigabytes(n: int) -> str:
    """Bytes for people: '480 GB', '2.5 GB', '3.2e+12 GB'."""
    gb = n / 1e9
    return f"{gb:.1f} GB" if gb < 10 else f"{gb:,.0f} GB" if gb < 1e6 else f"{gb:.1e} GB"
