"""Ablation: take a component out of the model and see what changes.

A target is an attention head (`Head(layer, head)`, via `blocks.{layer}.attn.hook_z`),
a whole MLP (`MLP(layer)`, via `blocks.{layer}.hook_mlp_out`) or one neuron
(`Neuron(layer, i)`, via `blocks.{layer}.mlp.hook_post[..., i]`). Its activation is
replaced by:

- `"zero"`: zeros. For a head this removes `W_O[head] @ z` from the attention output;
  the output bias `b_O`, shared by all heads, stays (as in TransformerLens).
- `"mean"`: the mean over the rows of a `reference` batch, *per position*. Per
  position, because activations at a position carry that position's identity (the
  first token's residual is often far larger than the rest); a mean over positions
  too would put position 0's activation into every position. The reference needs at
  least as many positions as the input; its first T are used (causal: they do not
  depend on later tokens).
- `"resample"`: the activation the same component had on *another* input: row i takes
  the activation of reference row `order[i]`. With a `seed` (default 0) the order is
  a random cycle through the reference rows, so when the reference is the input batch
  itself no row keeps its own activation; `seed=None` pairs row i with reference row i.

`ablated(...)` is a context manager, so an ablation composes with any other read
(`run_with_cache`, patching's one-per-forward path, a hand-written hook).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedbed.errors import SeedbedError
from seedbed.hooks import HookFn, HookPoint, hooks, run_with_cache
from seedbed.model import device_of

Method = Literal["zero", "mean", "resample"]
METHODS = ("zero", "mean", "resample")


@dataclass(frozen=True)
class Head:
    """Attention head `head` of layer `layer`: its z, i.e. its whole contribution through W_O."""

    layer: int
    head: int


@dataclass(frozen=True)
class MLP:
    """The whole MLP of `layer`: its output, `hook_mlp_out`."""

    layer: int


@dataclass(frozen=True)
class Neuron:
    """One MLP neuron: `mlp.hook_post[..., neuron]` of `layer` (after the nonlinearity)."""

    layer: int
    neuron: int


Target = Union[Head, MLP, Neuron]


def _hook_name(t: Target) -> str:
    if isinstance(t, Head):
        return f"blocks.{t.layer}.attn.hook_z"
    if isinstance(t, MLP):
        return f"blocks.{t.layer}.hook_mlp_out"
    return f"blocks.{t.layer}.mlp.hook_post"


def _check(model: nn.Module, t: Target) -> None:
    cfg = model.cfg  # type: ignore[attr-defined]
    if not isinstance(t, (Head, MLP, Neuron)):
        raise SeedbedError(f"cannot ablate {t!r}: targets are Head(layer, head), MLP(layer) or Neuron(layer, i)")
    if not 0 <= t.layer < cfg.n_layers:
        raise SeedbedError(f"{t} is out of range: the model has layers 0..{cfg.n_layers - 1}")
    if isinstance(t, Head) and not 0 <= t.head < cfg.n_heads:
        raise SeedbedError(f"{t} is out of range: layer {t.layer} has heads 0..{cfg.n_heads - 1}")
    if isinstance(t, (MLP, Neuron)) and cfg.attn_only:
        raise SeedbedError(f"cannot ablate {t}: the model is attention-only, it has no MLPs")
    if isinstance(t, Neuron) and not 0 <= t.neuron < cfg.d_mlp:
        raise SeedbedError(f"{t} is out of range: layer {t.layer}'s MLP has neurons 0..{cfg.d_mlp - 1}")


def _resample_order(n: int, n_ref: int, seed: int | None) -> Tensor:
    """Which reference row each of `n` rows takes its activation from."""
    if seed is None:
        return torch.arange(n) % n_ref
    if n_ref < 2:
        raise SeedbedError("resample ablation needs a reference of at least 2 rows, so that each row can take another's activation")
    p = torch.randperm(n_ref, generator=torch.Generator().manual_seed(seed))
    cycle = torch.empty_like(p)
    cycle[p] = p.roll(-1)  # row p[j] takes row p[j+1]: one random cycle, no fixed point
    return cycle[torch.arange(n) % n_ref]


def ablation_hooks(
    model: nn.Module,
    targets: Sequence[Target],
    method: Method = "zero",
    reference: Tensor | None = None,
    seed: int | None = 0,
) -> list[tuple[str, HookFn]]:
    """The (hook name, fn) pairs that ablate `targets`, for `hooks(...)` or `run_with_hooks(...)`.

    For "mean" and "resample" this runs the reference batch once, now, unablated.
    """
    if method not in METHODS:
        raise SeedbedError(f"unknown ablation method '{method}': choose one of {', '.join(METHODS)}")
    targets = list(targets)
    for t in targets:
        _check(model, t)
    by_name: dict[str, list[Target]] = {}
    for t in targets:
        by_name.setdefault(_hook_name(t), []).append(t)

    ref_acts: dict[str, Tensor] = {}
    if method != "zero":
        if reference is None:
            raise SeedbedError(f"'{method}' ablation needs a reference batch of tokens (reference=...)")
        _, ref_acts = run_with_cache(model, reference.to(device_of(model)), list(by_name))
        if method == "mean":
            ref_acts = {k: v.mean(0, keepdim=True) for k, v in ref_acts.items()}  # [1, pos, ...]

    def make(name: str, ts: list[Target]) -> HookFn:
        heads = [t.head for t in ts if isinstance(t, Head)]
        neurons = [t.neuron for t in ts if isinstance(t, Neuron)]
        whole = any(isinstance(t, MLP) for t in ts)

        def fn(x: Tensor, hook: HookPoint) -> Tensor:
            new = _replacement(x, ref_acts.get(name), method, seed)
            if whole:
                return new.expand_as(x).clone()
            out = x.clone()
            if heads:  # z: [batch, pos, head, d_head]
                out[:, :, heads] = new[:, :, heads]
            else:  # hook_post: [batch, pos, d_mlp]
                out[..., neurons] = new[..., neurons]
            return out

        return fn

    return [(name, make(name, ts)) for name, ts in by_name.items()]


def _replacement(x: Tensor, ref: Tensor | None, method: str, seed: int | None) -> Tensor:
    """What replaces activation `x` [batch, pos, ...]: broadcastable to x's shape."""
    if method == "zero":
        return torch.zeros_like(x[:1])
    assert ref is not None
    T = x.shape[1]
    if ref.shape[1] < T:
        raise SeedbedError(f"the reference has {ref.shape[1]} positions but the input has {T}: give a reference at least as long")
    if method == "mean":
        return ref[:, :T]
    return ref[_resample_order(x.shape[0], ref.shape[0], seed).to(ref.device), :T]


@contextmanager
def ablated(
    model: nn.Module,
    targets: Sequence[Target],
    method: Method = "zero",
    reference: Tensor | None = None,
    seed: int | None = 0,
) -> Iterator[nn.Module]:
    """Inside the block, every forward of `model` runs with `targets` ablated."""
    with hooks(model, ablation_hooks(model, targets, method, reference, seed)):  # type: ignore[arg-type]
        yield model


def ablate(
    model: nn.Module,
    tokens: Tensor,
    targets: Sequence[Target],
    method: Method = "zero",
    reference: Tensor | None = None,
    seed: int | None = 0,
) -> Tensor:
    """Logits [batch, pos, d_vocab] with `targets` ablated.

    For "resample" the reference defaults to `tokens` itself (each row takes another row's activation).
    """
    tokens = tokens.to(device_of(model))
    if method == "resample" and reference is None:
        reference = tokens
    with torch.no_grad(), ablated(model, targets, method, reference, seed):
        return model(tokens)


def loss_after_ablation(
    model: nn.Module,
    tokens: Tensor,
    targets: Sequence[Target],
    method: Method = "zero",
    reference: Tensor | None = None,
    seed: int | None = 0,
    metric: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Mean next-token loss of `tokens` with `targets` ablated, or `metric(logits)` when given.

    Compare with `loss_after_ablation(model, tokens, [])`, the loss with nothing ablated.
    """
    logits = ablate(model, tokens, targets, method, reference, seed)
    if metric is not None:
        return metric(logits)
    tokens = tokens.to(logits.device)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
