"""Attribution: which parts of the model wrote the logits.

The residual stream is a sum. At the end of the model it is the token embedding,
plus the position embedding, plus what every attention head and every MLP wrote
(Elhage et al. 2021, "A mathematical framework for transformer circuits").
`decompose_resid` returns those terms; `component_logits` and `logit_attribution`
push each one through the final LayerNorm and the unembedding to say how much of
each logit it wrote (direct logit attribution, DLA); `logit_lens` reads the
stream after every layer as if it were the last.

The final LayerNorm is not linear, so DLA freezes it (the TransformerLens
convention, `apply_ln_to_stack`): every component is centred, divided by the
*cached* scale of `ln_final` from the run being explained, and multiplied by the
LayerNorm weight; the LayerNorm bias is a component of its own. With the scale
frozen the map is linear, so the components' logits add up to the model's logits
exactly (float tolerance). The frozen scale is the one the whole stream had; a
component's "contribution" is therefore what it adds given everything else that was
there, not what it would produce alone.

Everything here assumes the model is in eval mode (no dropout), as `read.load`
gives it; the helpers that run the model put it there for the call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from seedbed.errors import SeedbedError
from seedbed.hooks import run_with_cache
from seedbed.model import Transformer, device_of, evaluating

Pos = Union[int, slice, None]  # one position (its axis dropped), a slice, or all positions
By = Literal["head", "layer"]

_HEAD = re.compile(r"L(\d+)H(\d+)")


# ── the components ───────────────────────────────────────────────────────────
@dataclass
class Components:
    """A stack of residual-stream terms with their labels; the terms sum to what was decomposed.

    `stack` is [component, batch, pos, ...] (no pos axis when one position was chosen);
    labels are "embed", "pos_embed", "L0H1" (a head's result), "L0 attn bias",
    "L0 attn" (a whole layer's attention, with `by="layer"`), "MLP0", "ln_final bias".
    """

    stack: Tensor
    labels: list[str]
    pos: Pos = field(default=None, repr=False)  # which positions, so the LN scale can be sliced alike

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, label: str) -> Tensor:
        if label not in self.labels:
            raise SeedbedError(f"no component labelled '{label}': the labels are {', '.join(self.labels)}")
        return self.stack[self.labels.index(label)]

    def total(self) -> Tensor:
        """The sum of all components: the decomposed residual (or the logits)."""
        return self.stack.sum(0)

    def heads(self) -> Tensor:
        """The per-head components as [n_layers, n_heads, ...] (needs `by="head"`)."""
        found = [(int(m[1]), int(m[2]), i) for i, lab in enumerate(self.labels) if (m := _HEAD.fullmatch(lab))]
        if not found:
            raise SeedbedError("these components have no per-head terms: decompose with by='head'")
        n_layers, n_heads = max(f[0] for f in found) + 1, max(f[1] for f in found) + 1
        rows = [i for _, _, i in sorted(found)]
        return self.stack[rows].reshape(n_layers, n_heads, *self.stack.shape[1:])


def attribution_names(model: Transformer) -> list[str]:
    """The hook points that `decompose_resid` and `component_logits` read from a cache (either `by`)."""
    names = ["hook_embed", "hook_pos_embed"]
    for l, block in enumerate(model.blocks):
        names += [f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_attn_out"]
        if block.has_mlp:
            names.append(f"blocks.{l}.hook_mlp_out")
    if model.cfg.layernorm:
        names.append("ln_final.hook_scale")
    return names


def attribution_cache(model: Transformer, tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and a cache holding just what attribution needs (one forward, eval mode)."""
    with evaluating(model):
        return run_with_cache(model, tokens.to(device_of(model)), attribution_names(model))


def _get(cache: dict[str, Tensor], name: str) -> Tensor:
    if name not in cache:
        raise SeedbedError(
            f"the cache has no '{name}': make it with seedbed.read.attribution_cache(model, tokens), "
            "or cache that hook point too"
        )
    return cache[name]


def _at(x: Tensor, pos: Pos) -> Tensor:
    """Select positions on axis 1 of a [batch, pos, ...] tensor."""
    return x if pos is None else x[:, pos]


def decompose_resid(
    model: Transformer, cache: dict[str, Tensor], layer: int | None = None, pos: Pos = None, by: By = "head"
) -> Components:
    """The residual stream before block `layer` (at the end of the model if None), as its terms.

    `by="head"`: embed, pos_embed, then per layer each head's result z_h @ W_O[h]
    ("L0H0"…), the attention output bias ("L0 attn bias") and the MLP's output
    ("MLP0"). `by="layer"`: the attention output of each layer as one term ("L0 attn").
    Value biases are inside the heads' results (z already carries them). The terms
    sum to `blocks.{layer}.hook_resid_pre` (or the last `hook_resid_post`).
    """
    if by not in ("head", "layer"):
        raise SeedbedError(f"by='{by}' is unknown: use by='head' (one term per head) or by='layer'")
    n_layers = model.cfg.n_layers
    layer = n_layers if layer is None else layer
    if not 0 <= layer <= n_layers:
        raise SeedbedError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers}, or None for the end)")
    embed = _at(_get(cache, "hook_embed"), pos)
    pos_embed = _get(cache, "hook_pos_embed")  # [pos, d_model]: positions are the same in every sequence
    pos_embed = _at(pos_embed.unsqueeze(0).expand(len(_get(cache, "hook_embed")), *pos_embed.shape), pos)
    terms, labels = [embed, pos_embed], ["embed", "pos_embed"]
    for l in range(layer):
        attn = model.blocks[l].attn
        if by == "head":
            z = _at(_get(cache, f"blocks.{l}.attn.hook_z"), pos)  # [batch, (pos,) head, d_head]
            results = torch.einsum("...hd,hdm->h...m", z, attn.W_O)
            terms += list(results) + [attn.out.bias.expand_as(embed)]
            labels += [f"L{l}H{h}" for h in range(attn.n_heads)] + [f"L{l} attn bias"]
        else:
            terms.append(_at(_get(cache, f"blocks.{l}.hook_attn_out"), pos))
            labels.append(f"L{l} attn")
        if model.blocks[l].has_mlp:
            terms.append(_at(_get(cache, f"blocks.{l}.hook_mlp_out"), pos))
            labels.append(f"MLP{l}")
    return Components(torch.stack([t.detach() for t in terms]), labels, pos)


# ── through the final LayerNorm and the unembedding ─────────────────────────
def apply_ln_to_stack(model: Transformer, cache: dict[str, Tensor], components: Components) -> Components:
    """Each component as it passes the final LayerNorm, with the LN's scale frozen.

    Centre each component (subtract its mean over d_model), divide by the cached
    `ln_final.hook_scale` of this very run, multiply by the LN weight; append the LN
    bias as the component "ln_final bias". Summed, this is exactly ln_final of the
    summed stream. Without LayerNorm the components pass unchanged.
    """
    if not model.cfg.layernorm:
        return components
    ln = model.ln_final
    scale = _at(_get(cache, "ln_final.hook_scale"), components.pos)  # [batch, (pos,) 1]
    stack = components.stack
    normed = (stack - stack.mean(-1, keepdim=True)) / scale * ln.weight.detach()
    bias = ln.bias.detach().expand_as(normed[0])
    return Components(torch.cat([normed, bias.unsqueeze(0)]), components.labels + ["ln_final bias"], components.pos)


def component_logits(model: Transformer, cache: dict[str, Tensor], pos: Pos = None, by: By = "head") -> Components:
    """Each component's direct contribution to every logit: [component, batch, (pos,) d_vocab].

    The end-of-model residual, decomposed, through the frozen final LayerNorm
    (`apply_ln_to_stack`), times W_U. The components sum to the model's logits.
    """
    normed = apply_ln_to_stack(model, cache, decompose_resid(model, cache, None, pos, by))
    return Components(normed.stack @ model.unembed.weight.detach().T, normed.labels, pos)


def logit_attribution(
    model: Transformer,
    cache: dict[str, Tensor],
    answer: int | Tensor,
    wrong: int | Tensor | None = None,
    pos: Pos = -1,
    by: By = "head",
) -> Components:
    """Each component's direct contribution to logit[answer] (minus logit[wrong] if given).

    `answer`/`wrong` are token ids: an int, or a tensor shaped like the selected
    positions ([batch] for one position, [batch, pos] for all). Defaults to the last
    position, where a next-token answer usually is. Returns [component, batch, (pos)];
    `.heads()` gives the per-head grid.
    """
    W_U = model.unembed.weight.detach()  # [d_vocab, d_model]
    to_ids = lambda t: torch.as_tensor(t, device=W_U.device)  # noqa: E731
    direction = W_U[to_ids(answer)]
    if wrong is not None:
        direction = direction - W_U[to_ids(wrong)]
    normed = apply_ln_to_stack(model, cache, decompose_resid(model, cache, None, pos, by))
    try:
        contributions = (normed.stack * direction).sum(-1)
    except RuntimeError:
        raise SeedbedError(
            f"answer has shape {tuple(to_ids(answer).shape)} but the selected positions are "
            f"{tuple(normed.stack.shape[1:-1])}: give one token id per selected position"
        ) from None
    return Components(contributions, normed.labels, pos)


# ── the logit lens ───────────────────────────────────────────────────────────
@dataclass
class LogitLens:
    """The stream after each layer, read through ln_final and the unembedding.

    `labels[i]` names the residual read (`blocks.{l}.hook_resid_pre`, then the last
    `hook_resid_post`); `logits` is [n_layers + 1, batch, pos, d_vocab]; `loss` and
    `accuracy` are [n_layers + 1], on the targets chosen. The last entry is the
    model's own output.
    """

    labels: list[str]
    logits: Tensor
    loss: Tensor
    accuracy: Tensor


def logit_lens(model: Transformer, tokens: Tensor, targets: Tensor | None = None, mask: Tensor | None = None) -> LogitLens:
    """Per-layer logits, loss and accuracy: what the model would say if it stopped there.

    Unlike DLA, each residual goes through the real final LayerNorm (its own scale).
    `targets` [batch, pos] are the wanted tokens at each input position; by default
    the next token (`tokens[:, 1:]`, scoring positions 0..pos-2). `mask` (shaped like
    the targets, bool) restricts the loss and accuracy, e.g. to a soil's `answer`.
    """
    n_layers = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
    tokens = tokens.to(device_of(model))
    with evaluating(model), torch.no_grad():
        _, cache = run_with_cache(model, tokens, names)
        logits = torch.stack([model.unembed(model.ln_final(cache[n])) for n in names])
    scored = logits
    if targets is None:
        targets, scored = tokens[:, 1:], logits[:, :, :-1]
    targets = targets.to(logits.device)
    if targets.shape != scored.shape[1:3]:
        raise SeedbedError(f"targets have shape {tuple(targets.shape)} but the input positions are {tuple(scored.shape[1:3])}: give one target per position")
    keep = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask.to(logits.device).bool()
    if keep.shape != targets.shape or not keep.any():
        raise SeedbedError(f"mask must be a non-empty bool tensor shaped like the targets {tuple(targets.shape)}")
    chosen, wanted = scored[:, keep], targets[keep]  # [layer, n, d_vocab], [n]
    loss = torch.stack([F.cross_entropy(c, wanted) for c in chosen])
    accuracy = (chosen.argmax(-1) == wanted).double().mean(-1)
    return LogitLens(names, logits, loss, accuracy)
