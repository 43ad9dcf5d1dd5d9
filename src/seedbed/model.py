"""The transformer: a GPT-2-style decoder, readable top to bottom, every intermediate a hook point.

Pre-LayerNorm blocks, learned positions, GELU (exact, or GPT-2's tanh "gelu_new") or ReLU MLP; options for
attention-only, no LayerNorm, tied embeddings. Hook names follow TransformerLens.

Speed: attention normally runs fused (one QKV matmul + `scaled_dot_product_attention`).
Only when someone hooks the attention scores or pattern does a layer compute them
explicitly; both paths agree to float tolerance (tests/test_model.py).

Sampling: `model(new_tokens, cache)` with a `KVCache` runs only the new positions, reading the
earlier ones' keys and values from the cache, and gives the logits a forward over the whole
sequence would (tests/test_sample.py). Hooks then see the new positions only.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedbed.conditions import Architecture
from seedbed.errors import SeedbedError
from seedbed.hooks import HookPoint, name_hook_points


class LayerNorm(nn.Module):
    """LayerNorm with its scale and output exposed (`hook_scale`, `hook_normalized`)."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model], after weight and bias

    def forward(self, x: Tensor) -> Tensor:
        if not self.hook_scale.fns:
            return self.hook_normalized(F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps))
        # the fused kernel also returns 1/scale, so exposing the scale costs one reciprocal
        out, mean, rstd = torch.native_layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        scale = rstd.reciprocal()
        hooked = self.hook_scale(scale)
        if hooked is not scale:  # a hook replaced the scale: normalise by it instead
            out = (x - mean) / hooked * self.weight + self.bias
        return self.hook_normalized(out)


@dataclass
class LayerKV:
    """One layer's keys and values of the positions run so far, [batch, pos, head, d_head] each."""

    k: Tensor | None = None
    v: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[1]

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new positions' keys and values; returns those of every position so far."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=1)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=1)
        return self.k, self.v


@dataclass
class KVCache:
    """Every layer's keys and values so far, so that a forward need only run the new tokens (sampling)."""

    layers: list[LayerKV] = field(default_factory=list)

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls([LayerKV() for _ in range(n_layers)])

    @property
    def length(self) -> int:
        """Positions already run: the new tokens' positions start here."""
        return self.layers[0].length if self.layers else 0


class Attention(nn.Module):
    """Causal multi-head self-attention."""

    def __init__(self, cfg: Architecture) -> None:
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        inner = cfg.n_heads * cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * inner)  # fused: one matmul for Q, K and V
        self.out = nn.Linear(inner, cfg.d_model)
        self.dropout = cfg.dropout
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, query, key], masked, before softmax
        self.hook_pattern = HookPoint()  # [batch, head, query, key]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]: pattern-weighted values

    def forward(self, x: Tensor, kv: LayerKV | None = None) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).unbind(2)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        past = 0
        if kv is not None:  # the earlier positions' keys and values come from the cache: T queries, S keys
            past = kv.length
            k, v = kv.extend(k, v)
        S = k.shape[1]
        p_drop = self.dropout if self.training else 0.0
        if self.hook_attn_scores.fns or self.hook_pattern.fns:  # explicit path: materialise the pattern
            future = torch.full((T, S), float("-inf"), dtype=q.dtype, device=x.device).triu_(1 + past)
            H, d = self.n_heads, self.d_head  # one fused op: future + (q @ kᵀ) / sqrt(d_head)
            scores = torch.baddbmm(
                future, q.transpose(1, 2).reshape(B * H, T, d), k.permute(0, 2, 3, 1).reshape(B * H, d, S), alpha=1 / math.sqrt(d)
            ).view(B, H, T, S)
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(scores.softmax(dim=-1))
            z = torch.matmul(F.dropout(pattern, p_drop), v.transpose(1, 2)).transpose(1, 2)
        else:  # fast path: fused kernel, no T×S tensor kept
            # is_causal aligns the mask top-left, right only when queries and keys start together (no cache)
            mask = None if past == 0 else torch.ones(T, S, dtype=torch.bool, device=x.device).tril_(past)
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=p_drop, is_causal=past == 0
            ).transpose(1, 2)
        z = self.hook_z(z)
        return F.dropout(self.out(z.reshape(B, T, -1)), p_drop)

    # Per-head weight views in TransformerLens's shapes, for reading the model.
    def _split(self, which: int) -> tuple[Tensor, Tensor]:
        inner = self.n_heads * self.d_head
        w = self.qkv.weight[which * inner : (which + 1) * inner]  # [inner, d_model]
        b = self.qkv.bias[which * inner : (which + 1) * inner]
        return w.view(self.n_heads, self.d_head, -1).transpose(1, 2), b.view(self.n_heads, self.d_head)

    @property
    def W_Q(self) -> Tensor:  # [head, d_model, d_head]
        return self._split(0)[0]

    @property
    def W_K(self) -> Tensor:
        return self._split(1)[0]

    @property
    def W_V(self) -> Tensor:
        return self._split(2)[0]

    @property
    def W_O(self) -> Tensor:  # [head, d_head, d_model]
        return self.out.weight.view(-1, self.n_heads, self.d_head).permute(1, 2, 0)


# gelu_new: GPT-2's tanh approximation of GELU, so that GPT-2 family models read from Hugging Face run unchanged
ACTIVATIONS = {"gelu": F.gelu, "gelu_new": partial(F.gelu, approximate="tanh"), "relu": F.relu}


class MLP(nn.Module):
    def __init__(self, cfg: Architecture) -> None:
        super().__init__()
        assert cfg.d_mlp is not None
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = ACTIVATIONS[cfg.act]
        self.dropout = cfg.dropout
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp], before the nonlinearity
        self.hook_post = HookPoint()  # after it

    def forward(self, x: Tensor) -> Tensor:
        h = self.hook_post(self.act(self.hook_pre(self.fc_in(x))))
        return F.dropout(self.fc_out(h), self.dropout if self.training else 0.0)


class Block(nn.Module):
    """resid_pre → (+ attn) → resid_mid → (+ mlp) → resid_post. Attention-only blocks skip the MLP."""

    def __init__(self, cfg: Architecture) -> None:
        super().__init__()  # submodules in forward order, so hook points are listed in that order
        self.hook_resid_pre = HookPoint()
        self.ln1 = LayerNorm(cfg.d_model) if cfg.layernorm else nn.Identity()
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()
        self.has_mlp = not cfg.attn_only
        if self.has_mlp:
            self.hook_resid_mid = HookPoint()
            self.ln2 = LayerNorm(cfg.d_model) if cfg.layernorm else nn.Identity()
            self.mlp = MLP(cfg)
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: Tensor, kv: LayerKV | None = None) -> Tensor:
        x = self.hook_resid_pre(x)
        x = x + self.hook_attn_out(self.attn(self.ln1(x), kv))
        if self.has_mlp:
            x = self.hook_resid_mid(x)
            x = x + self.hook_mlp_out(self.mlp(self.ln2(x)))
        return self.hook_resid_post(x)


class Transformer(nn.Module):
    """tokens [batch, pos] → logits [batch, pos, d_vocab]."""

    def __init__(self, cfg: Architecture, seed: int = 0) -> None:
        super().__init__()
        if cfg.d_vocab is None:
            raise SeedbedError("architecture.d_vocab is unset: resolve the conditions against their soil first")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model) if cfg.layernorm else nn.Identity()
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        if cfg.tied_embeddings:
            self.unembed.weight = self.embed.weight
        self.hook_points = name_hook_points(self)
        if self.embed.weight.device.type != "meta":  # a meta model only has shapes
            self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Initial weights, drawn from a generator seeded by `seed` alone (not the global RNG).

        `gpt2`: matrices ~ N(0, 0.02); the projections that write into the residual stream
        are scaled by 1/sqrt(2 · n_layers) so the stream's variance does not grow with depth.
        `fan-in`: matrices ~ N(0, 1/fan_in) (embeddings: 1/d_model), as in Nanda et al.'s
        grokking code; several times larger, and the init scale decides whether a model
        memorises first and generalises late (Liu et al. 2022, Omnigrok).
        """
        g = torch.Generator().manual_seed(seed)
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():  # tied weights appear once
            if p.dim() == 1:  # biases start at 0, LayerNorm gains at 1
                p.fill_(0.0 if name.endswith("bias") else 1.0)
                continue
            if self.cfg.init == "fan-in":
                std = 1 / math.sqrt(self.cfg.d_model if name.startswith(("embed.", "pos_embed.")) else p.shape[1])
            else:
                std = residual_std if name.endswith(("attn.out.weight", "mlp.fc_out.weight")) else 0.02
            p.copy_(torch.randn(p.shape, generator=g) * std)

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits of every position of `tokens`; with a `cache`, `tokens` are the positions after the cached ones
        (their keys and values are added to it) and the hooks see those new positions only."""
        T = tokens.shape[1]
        start = 0 if cache is None else cache.length
        if T == 0:
            raise SeedbedError("input has no tokens: give at least one per sequence")
        if start + T > self.cfg.n_ctx:
            held = f" after {start} cached" if start else ""
            raise SeedbedError(f"input has {T} tokens{held} but the model's n_ctx is {self.cfg.n_ctx}: shorten the input")
        pos = torch.arange(start, start + T, device=tokens.device)  # positions continue after the cached ones
        x = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(pos))
        if self.cfg.dropout and self.training:
            x = F.dropout(x, self.cfg.dropout)
        kvs = cache.layers if cache is not None else [None] * len(self.blocks)
        for block, kv in zip(self.blocks, kvs):
            x = block(x, kv)
        return self.unembed(self.ln_final(x))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ── for code that reads a model ──────────────────────────────────────────────
def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are, so inputs can be moved there."""
    return next(model.parameters()).device


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration (no dropout), then the mode it had before."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
