"""Activation patching and attribution patching: which activations carry the difference between two inputs.

Convention (TransformerLens's "denoising"): run the *corrupted* input, patch in one
activation from the *clean* run, and measure `metric(logits)`. An entry far from
`metric(corrupted logits)` marks an activation that carries what the corruption broke.
A patch covers every row of the batch (row i of the clean batch goes into row i of the
corrupted one), at one position (`per_position=True`) or at all of them.

`metric` maps logits [batch, pos, d_vocab] of the whole corrupted batch to a scalar
tensor (a logit difference, the loss on some positions, ...). The results are raw
metric values; to normalise, compare with `metric(model(corrupted))` (nothing patched)
and `metric(model(clean))`. If the metric reads only some positions, say so with
`metric_positions=[...]`: it then gets the logits of those positions alone,
[batch, len(metric_positions), d_vocab], and the batched path computes only what they
depend on, which for a last-position metric is most of the saving. Without it, the
batched path finds those positions itself: the ones where the metric's gradient is
nonzero, confirmed by setting every other position's logits to NaN and getting the
same number (`_positions_read`); the metric still receives full-length logits.

Sites and the shape of the result (layer, head and pos axes in that order):

    site         hook                        per_position=True    per_position=False
    resid_pre    blocks.L.hook_resid_pre     [layer, pos]         [layer]
    attn_out     blocks.L.hook_attn_out      [layer, pos]         [layer]
    mlp_out      blocks.L.hook_mlp_out       [layer, pos]         [layer]
    resid_post   blocks.L.hook_resid_post    [layer, pos]         [layer]
    z            blocks.L.attn.hook_z        [layer, head, pos]   [layer, head]

Two paths give the same numbers. `batched=False` is the reference: one forward of the
whole model per patch, with a hook that patches. `batched=True` (default) is the fast
one, exact but not by hooks, using four facts about a causal model:

1. a patch at layer L changes nothing before layer L, so each copy starts from the
   corrupted run's cached residual instead of rerunning earlier layers;
2. a patch at position p changes nothing at positions < p, so later layers run on
   positions p.. only, attending to the cached corrupted keys and values of the rest;
3. between a patch after layer L's attention (z, attn_out, mlp_out, resid_post) and the
   next attention, everything is per position, so only row p is computed there; a patch
   in the last layer only ever changes the logits at p;
4. positions after the last one the metric reads never matter, and in the last layer
   only the positions it reads do.

Many patched copies are stacked along the batch dimension (copy k = the whole corrupted
batch with patch k applied) and run together, in chunks whose activations fit `max_mib`;
`metric` is called once per copy, on that copy's logits.
The two paths agree to float rounding (tests check allclose at 1e-5) but are not
bit-identical on CPU in general: matrix products over other numbers of rows, the
gathered rows of point 3 and attention with a key prefix (point 2) can round
differently (by ~1e-7 relative in the tests; some shapes happen to match bit for bit).
The batched path does not run through hook points; if any hook is attached to the
model (an `ablated(...)` block, say), patching takes the one-per-forward path so
that those hooks apply.

`attribution_patching` is the gradient approximation of the same sweep: two forwards
and one backward for every site at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seedbed.errors import SeedbedError
from seedbed.hooks import HookPoint, run_with_cache, run_with_hooks
from seedbed.model import device_of

Site = Literal["resid_pre", "attn_out", "mlp_out", "resid_post", "z"]
SITES: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out", "resid_post", "z")
Metric = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class _Patch:
    layer: int
    pos: int | None  # None: every position
    head: int | None  # z only


def hook_name(site: str, layer: int) -> str:
    """The TransformerLens hook name of `site` in `layer`."""
    return f"blocks.{layer}.attn.hook_z" if site == "z" else f"blocks.{layer}.hook_{site}"


# ── activation patching ──────────────────────────────────────────────────────
def activation_patching(
    model: nn.Module,
    clean: Tensor,
    corrupted: Tensor,
    metric: Metric,
    site: Site = "z",
    *,
    per_position: bool = True,
    metric_positions: Sequence[int] | None = None,
    batched: bool = True,
    max_mib: float = 256.0,
) -> Tensor:
    """`metric` of the corrupted run with each activation of `site` patched from the clean run.

    Returns [layer, pos] ([layer] with per_position=False), or for "z" [layer, head, pos]
    ([layer, head]). `metric_positions`: the only positions whose logits `metric` reads
    (it gets [batch, len(metric_positions), d_vocab]). `max_mib` bounds the activations
    of one batched forward (an estimate).
    """
    clean, corrupted = _inputs(model, clean, corrupted)
    _check_site(model, site)
    cfg = model.cfg  # type: ignore[attr-defined]
    T = corrupted.shape[1]
    read = _read_positions(metric_positions, T, corrupted.device)
    patches, shape = _patches(cfg, site, per_position, T)
    clean_cache = _cache_only(model, clean, [hook_name(site, l) for l in range(cfg.n_layers)])
    hooked = any(p.fns for p in model.hook_points.values())  # type: ignore[attr-defined]
    if batched and not hooked:
        values = _batched(model, corrupted, clean_cache, metric, site, patches, read, max_mib, metric_positions is None)
    else:
        values = [_one_patch(model, corrupted, clean_cache, metric, site, p, read) for p in patches]
    return torch.stack(values).reshape(shape)


@dataclass
class PatchingResult:
    """An activation-patching sweep with the two numbers it is read against, as a notebook shows it.

    `effect` is what `activation_patching` returns (raw metric values); `clean` and `corrupted`
    are the metric with nothing patched. `recovered` is the share of the clean − corrupted
    difference a patch restores: 1 means that activation alone carries it, 0 that it carries none.
    """

    effect: Tensor
    site: str
    per_position: bool
    clean: float
    corrupted: float
    labels: list[str] | None = None  # a text label per position (the clean tokens), if given

    @property
    def recovered(self) -> Tensor:
        gap = self.clean - self.corrupted
        return (self.effect - self.corrupted) / gap if gap != 0 else torch.full_like(self.effect, float("nan"))

    def _repr_html_(self) -> str:
        """A heat map over positions (per_position), else a table of numbers: rows are layers (or heads, for z)."""
        from seedbed.read import html

        r = self.recovered.float().cpu()
        m = max(1.0, float(r.nan_to_num(0.0).abs().max()))
        note = f"metric: clean {self.clean:.4g}, corrupted {self.corrupted:.4g}. Each cell: the corrupted run with that activation taken from the clean run"
        title = f"Activation patching at {self.site}: share of the clean − corrupted difference restored"
        if not self.per_position:  # [layer] or [layer, head]: few numbers, written out
            r = r.reshape(r.shape[0], -1)
            cols = [f"H{h}" for h in range(r.shape[1])] if self.site == "z" else ["restored"]
            rows = [[f"L{l}", *(html.shaded(float(v), -m, m) for v in r[l])] for l in range(r.shape[0])]
            return html.box(title, html.table(["layer", *cols], rows, numeric=set(range(1, len(cols) + 1))), note + ", at every position.")
        rows = [f"L{l}H{h}" for l in range(r.shape[0]) for h in range(r.shape[1])] if self.site == "z" else [f"L{l}" for l in range(r.shape[0])]
        r = r.reshape(len(rows), -1)
        labels = self.labels if self.labels is not None and len(self.labels) == r.shape[1] else None
        cols = [f"{j} {html.token_label(labels[j])}" if labels else str(j) for j in range(r.shape[1])]
        effect = self.effect.reshape(r.shape)
        hover = lambda i, j, v: f"patch {rows[i]} at position {cols[j]}: restores {v:.3f} (metric {float(effect[i, j]):.4g})"
        body = html.heatmap(r.tolist(), rows, cols, -m, m, hover=hover) + html.scale_bar(-m, m, "restored")
        return html.box(title, body, html.cut_note(*r.shape) + note + ", at one position.")


def patching_result(
    model: nn.Module, clean: Tensor, corrupted: Tensor, metric: Metric, site: Site = "z", *, labels: list[str] | None = None,
    per_position: bool = True, metric_positions: Sequence[int] | None = None, **kwargs,
) -> PatchingResult:
    """`activation_patching` with its clean and corrupted baselines, as a `PatchingResult` (same arguments;
    `labels`: text for each position, shown with the heat map)."""
    effect = activation_patching(model, clean, corrupted, metric, site, per_position=per_position, metric_positions=metric_positions, **kwargs)
    clean, corrupted = _inputs(model, clean, corrupted)
    read = _read_positions(metric_positions, corrupted.shape[1], corrupted.device)
    with torch.no_grad():
        base = [float(_scalar(metric(model(x)[:, read]))) for x in (clean, corrupted)]
    return PatchingResult(effect, site, per_position, base[0], base[1], labels)


def _patches(cfg, site: str, per_position: bool, T: int) -> tuple[list[_Patch], tuple[int, ...]]:
    """Every patch of the sweep, in the order of the result's axes, and that shape."""
    positions: list[int | None] = list(range(T)) if per_position else [None]
    heads: list[int | None] = list(range(cfg.n_heads)) if site == "z" else [None]
    patches = [_Patch(l, p, h) for l in range(cfg.n_layers) for h in heads for p in positions]
    shape = (cfg.n_layers,) + ((cfg.n_heads,) if site == "z" else ()) + ((T,) if per_position else ())
    return patches, shape


def _one_patch(
    model: nn.Module, corrupted: Tensor, clean_cache: dict[str, Tensor], metric: Metric, site: str, patch: _Patch, read: Tensor
) -> Tensor:
    """The reference: one whole forward of the corrupted input with a hook that patches."""
    name = hook_name(site, patch.layer)
    index: tuple = (slice(None), slice(None) if patch.pos is None else patch.pos)
    if patch.head is not None:
        index += (patch.head,)

    def patch_in(x: Tensor, hook: HookPoint) -> Tensor:
        x = x.clone()
        x[index] = clean_cache[name][index]
        return x

    with torch.no_grad():
        return _scalar(metric(run_with_hooks(model, corrupted, [(name, patch_in)])[:, read]))


# ── the batched path ─────────────────────────────────────────────────────────
def _batched(
    model: nn.Module,
    corrupted: Tensor,
    clean_cache: dict[str, Tensor],
    metric: Metric,
    site: str,
    patches: list[_Patch],
    read: Tensor,
    max_mib: float,
    find_reads: bool = False,
) -> list[Tensor]:
    cfg = model.cfg  # type: ignore[attr-defined]
    n_layers, N = cfg.n_layers, corrupted.shape[0]
    names = [f"blocks.{l}.{n}" for l in range(n_layers) for n in ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v")]
    names += [hook_name(site, l) for l in range(n_layers) if site == "z"]
    names += [f"blocks.{l}.hook_resid_mid" for l in range(n_layers) if site == "mlp_out"]
    corrupt_logits, corrupt = run_with_cache(model, corrupted, names)
    found = _positions_read(metric, corrupt_logits) if find_reads else None
    if found is not None:  # compute only what the metric reads; it still gets logits of every position
        read, metric = found, _embedded(metric, corrupt_logits, found)
    base = corrupt_logits[:, read]
    unpatched = _scalar(metric(base.clone())).clone()

    read_list = read.tolist()

    def changes_nothing(p: _Patch) -> bool:  # the patch comes after every position read, or (in the last layer) misses them
        last = _resume_layer(site, p.layer) == n_layers
        return p.pos is not None and (p.pos > read_list[-1] or last and p.pos not in read_list)

    values = {p: unpatched for p in patches if changes_nothing(p)}
    todo = [p for p in patches if p not in values]
    with torch.no_grad():
        for chunk in _chunks(cfg, site, todo, N, int(read[-1]) + 1, max_mib):
            for patch, logits in zip(chunk, _run_chunk(model, site, chunk, clean_cache, corrupt, base, read)):
                values[patch] = _scalar(metric(logits)).clone()  # not a view of the reused buffer
    return [values[p] for p in patches]


def _positions_read(metric: Metric, logits: Tensor) -> Tensor | None:
    """The positions whose logits `metric` depends on, found by asking it; None if it may read them all.

    Candidates are the positions where the metric's gradient is nonzero. They are
    then checked: with every other position's logits set to NaN the metric must give
    exactly the same number (NaN spreads through any arithmetic that touches it). A
    metric that is not differentiable, or that fails the check, reads everything.
    """
    x = logits.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            m = _scalar(metric(x))
            if not m.requires_grad:
                return None
            (grad,) = torch.autograd.grad(m, x, allow_unused=True)
        if grad is None:
            return None
        read = grad.ne(0).flatten(2).any(-1).any(0).nonzero().flatten()
        if len(read) in (0, logits.shape[1]):
            return None
        probe = logits.detach().clone()
        others = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
        others[read] = False
        probe[:, others] = float("nan")
        with torch.no_grad():
            same = torch.equal(_scalar(metric(probe)), _scalar(metric(logits.detach().clone())))
    except Exception:  # noqa: BLE001 - a metric that cannot take these inputs is simply not narrowed
        return None
    return read if same else None


def _embedded(metric: Metric, logits: Tensor, read: Tensor) -> Metric:
    """`metric` fed full-length logits: the read positions' patched values over the corrupted run's."""
    full = logits.detach().clone()

    def on_read_positions(part: Tensor) -> Tensor:
        full[:, read] = part
        return metric(full)

    return on_read_positions


def _resume_layer(site: str, layer: int) -> int:
    """The first layer whose attention sees the patch: there the change spreads to later positions."""
    return layer if site == "resid_pre" else layer + 1


def _chunks(cfg, site: str, patches: list[_Patch], N: int, end: int, max_mib: float) -> Iterable[list[_Patch]]:
    """Patches of one layer, by position, in groups that share a start position and fit `max_mib`.

    Copies in a chunk all run positions s..end-1 from the chunk's first position s; a
    copy patched at p > s recomputes s..p-1 for nothing, so a chunk spans at most end/8 positions.
    """
    d, V, d_mlp = cfg.d_model, cfg.d_vocab, (0 if cfg.attn_only else cfg.d_mlp)
    def start(p: _Patch) -> int:
        return p.pos or 0

    by_layer: dict[int, list[_Patch]] = {}
    for p in patches:
        by_layer.setdefault(p.layer, []).append(p)
    for layer, group in by_layer.items():
        last = _resume_layer(site, layer) == cfg.n_layers
        span = end if last else max(1, end // 8)
        chunk: list[_Patch] = []
        for p in sorted(group, key=start):
            s = start(chunk[0]) if chunk else start(p)
            S = end - s if not last or p.pos is None else 1  # positions each copy computes
            mib = 4 * N * (end * V + S * (V + 8 * d + 2 * d_mlp) * (len(chunk) + 1)) / 2**20
            if chunk and (start(p) - s >= span or mib > max_mib):
                yield chunk
                chunk = []
            chunk.append(p)
        if chunk:
            yield chunk


def _gather(act: Tensor, pos: Tensor) -> Tensor:
    """act [batch, pos, ...] at positions pos [copy, P] → [copy, batch, P, ...]."""
    return act[:, pos].movedim(0, 1)


def _run_chunk(
    model: nn.Module,
    site: str,
    chunk: list[_Patch],
    clean: dict[str, Tensor],
    corrupt: dict[str, Tensor],
    base: Tensor,
    read: Tensor,
) -> Iterator[Tensor]:
    """Logits [batch, read positions, d_vocab] of the corrupted input with patch k applied, for each k in turn.

    `base` holds the corrupted run's logits at the read positions. Each result is valid
    until the next is asked for: one buffer is reused, since copying the unchanged logits
    for every copy would cost about as much as computing the changed ones.
    """
    cfg = model.cfg  # type: ignore[attr-defined]
    N, T = corrupt["blocks.0.hook_resid_pre"].shape[:2]
    K, L = len(chunk), chunk[0].layer
    dev = base.device
    if chunk[0].pos is None:
        pos = torch.arange(T, device=dev).expand(K, T)
    else:
        pos = torch.tensor([[p.pos] for p in chunk], device=dev)  # [copy, 1]
    name = hook_name(site, L)
    block = model.blocks[L]  # type: ignore[index]

    # 1. The residual entering layer R at the patched positions, computed there alone.
    R = _resume_layer(site, L)
    if site in ("resid_pre", "resid_post"):
        new = _gather(clean[name], pos)
    elif site == "mlp_out":
        new = _gather(corrupt[f"blocks.{L}.hook_resid_mid"], pos) + _gather(clean[name], pos)
    else:
        if site == "z":
            heads = torch.tensor([p.head for p in chunk], device=dev)
            mine = (heads[:, None] == torch.arange(cfg.n_heads, device=dev)).view(K, 1, 1, -1, 1)
            z = torch.where(mine, _gather(clean[name], pos), _gather(corrupt[name], pos))
            attn_out = block.attn.out(z.flatten(-2))
        else:
            attn_out = _gather(clean[name], pos)
        mid = _gather(corrupt[f"blocks.{L}.hook_resid_pre"], pos) + attn_out
        new = mid + block.mlp(block.ln2(mid)) if block.has_mlp else mid

    buffer = base.clone()
    # 2. A patch in the last layer changes only the logits at its own positions.
    if R == cfg.n_layers:
        k_of, p_of, q_of = (pos[:, :, None] == read).nonzero(as_tuple=True)  # patched rows that are read
        rows = model.unembed(model.ln_final(new[k_of, :, p_of]))  # type: ignore[operator]  # [rows, batch, d_vocab]
        ends = torch.bincount(k_of, minlength=K).cumsum(0).tolist()
        for i in range(K):
            of_i = slice(ends[i - 1] if i else 0, ends[i])
            buffer[:, q_of[of_i]] = rows[of_i].transpose(0, 1)
            yield buffer
            buffer[:, q_of[of_i]] = base[:, q_of[of_i]]
        return

    # 3. Otherwise run layers R.. on positions s..e-1 with the corrupted keys and values of
    #    positions < s; e - 1 is the last position read, and the last layer runs only those read.
    #    Layer R's input differs from the corrupted run's only at the patched positions,
    #    so its queries, keys and values are the cached ones except there.
    s, e = int(pos.min()), int(read[-1]) + 1
    inside = (pos < e).all(0)  # drop patched positions past e (all-position patches only; the others start before e)
    pos, new = pos[:, inside] - s, new[:, :, inside]

    def patched(act: Tensor, rows: Tensor) -> Tensor:  # act [batch, pos, ...] of the corrupted run, at s..e-1 in K copies
        out = act[:, s:e].expand(K, *act[:, s:e].shape).clone()
        index = pos.view(K, 1, -1, *[1] * (rows.dim() - 3)).expand_as(rows)
        return out.scatter_(2, index, rows).flatten(0, 1)

    rows_qkv = _qkv(model.blocks[R].attn, model.blocks[R].ln1(new))  # type: ignore[index]
    first_qkv = tuple(patched(corrupt[f"blocks.{R}.attn.hook_{n}"], rows) for n, rows in zip("qkv", rows_qkv))
    prefix = [
        (_copies(corrupt[f"blocks.{l}.attn.hook_k"][:, :s], K), _copies(corrupt[f"blocks.{l}.attn.hook_v"][:, :s], K))
        for l in range(R, cfg.n_layers)
    ]
    later = read >= s
    keep = None if int(later.sum()) == e - s else read[later] - s  # None: every position s..e-1 is read
    x = patched(corrupt[f"blocks.{R}.hook_resid_pre"], new)
    tail = run_suffix(model, R, x, prefix, keep, first_qkv).view(K, N, -1, base.shape[-1])  # type: ignore[arg-type]
    for i in range(K):
        buffer[:, later] = tail[i]
        yield buffer


def _copies(x: Tensor, K: int) -> Tensor:
    return x.expand(K, *x.shape).flatten(0, 1)


def run_suffix(
    model: nn.Module,
    layer: int,
    resid: Tensor,
    prefix: Sequence[tuple[Tensor, Tensor]] = (),
    keep: Tensor | None = None,
    first_qkv: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """Logits from the residual `resid` [batch, S, d_model] at positions s..s+S-1 entering block `layer`.

    `prefix[i]` holds the keys and values [batch, s, head, d_head] of positions 0..s-1
    in block `layer + i` (empty: s = 0). `keep`: the positions (counted from s) whose
    logits are wanted, so that the last block computes only those; all by default.
    `first_qkv`: block `layer`'s queries, keys and values of these positions, if known.
    The arithmetic is `Block.forward`'s, without hook points; with s = 0 and `layer = 0`
    it is the model's forward from the embeddings. Attention-only, LayerNorm-free and
    MLP models all work.
    """
    x = resid
    blocks = list(model.blocks[layer:])  # type: ignore[index]
    for i, block in enumerate(blocks):
        k_prev, v_prev = prefix[i] if prefix else (None, None)
        only = keep if i == len(blocks) - 1 else None
        q, k, v = first_qkv if i == 0 and first_qkv is not None else _qkv(block.attn, block.ln1(x))
        z = _attend(q, k, v, k_prev, v_prev, only)
        x = (x if only is None else x[:, only]) + block.attn.out(z.flatten(-2))
        if block.has_mlp:
            x = x + block.mlp(block.ln2(x))
    return model.unembed(model.ln_final(x))  # type: ignore[operator]


def _qkv(attn: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values [..., pos, head, d_head] of the normalised residual h [..., pos, d_model]."""
    q, k, v = attn.qkv(h).unflatten(-1, (3, attn.n_heads, attn.d_head)).unbind(-3)
    return q, k, v


def _attend(q: Tensor, k: Tensor, v: Tensor, k_prev: Tensor | None, v_prev: Tensor | None, only: Tensor | None) -> Tensor:
    """z [batch, queries, head, d_head] of the S newest positions (or those in `only`), earlier keys and values given."""
    S = q.shape[1]
    s = 0 if k_prev is None else k_prev.shape[1]
    if s:
        k, v = torch.cat([k_prev, k], 1), torch.cat([v_prev, v], 1)
    queries = torch.arange(S, device=q.device) if only is None else only
    if only is not None:
        q = q[:, only]
    mask = None
    if s or only is not None:  # query at s + i sees keys 0..s + i
        mask = torch.arange(s + S, device=q.device) <= (s + queries)[:, None]
    z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=mask is None)
    return z.transpose(1, 2)


# ── attribution patching ─────────────────────────────────────────────────────
def attribution_patching(
    model: nn.Module,
    clean: Tensor,
    corrupted: Tensor,
    metric: Metric,
    sites: Sequence[Site] | None = None,
    *,
    metric_positions: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """The first-order estimate of `activation_patching` for every site and position at once.

    attribution = (clean − corrupted activation) · ∂metric/∂activation at the corrupted run,
    summed over the hidden dimension and the batch: what patching would change the metric
    by, if the metric were linear in that activation (minus `metric(corrupted)`, the
    baseline activation patching includes). Exactly two forwards (clean, corrupted) and one
    backward. Results per site as in `activation_patching` with per_position=True:
    [layer, pos], "z" [layer, head, pos]; sum over pos for the all-position estimate.
    Sites default to all the model has; fewer cost less, since the clean forward stops at
    the last site needed and the backward at the first (`["z"]`: the clean run skips the
    last MLP and the unembedding, the backward the first layer's attention).
    """
    clean, corrupted = _inputs(model, clean, corrupted)
    cfg = model.cfg  # type: ignore[attr-defined]
    read = _read_positions(metric_positions, corrupted.shape[1], corrupted.device)
    sites = [s for s in SITES if s != "mlp_out" or not cfg.attn_only] if sites is None else list(sites)
    for s in sites:
        _check_site(model, s)
    names = [hook_name(s, l) for s in sites for l in range(cfg.n_layers)]
    clean_cache = _cache_only(model, clean, names)

    acts: dict[str, Tensor] = {}

    def keep(x: Tensor, hook: HookPoint) -> Tensor:
        if not x.requires_grad:  # frozen weights: make the activation a leaf so it still gets a gradient
            x = x.detach().requires_grad_(True)
        acts[hook.name] = x
        return x

    with torch.enable_grad():
        m = _scalar(metric(run_with_hooks(model, corrupted, [(names, keep)])[:, read]))
        grads = torch.autograd.grad(m, [acts[n] for n in names], allow_unused=True)
    out: dict[str, Tensor] = {}
    for s in sites:
        per_layer = []
        for l in range(cfg.n_layers):
            n = hook_name(s, l)
            g = grads[names.index(n)]
            a = (clean_cache[n] - acts[n].detach()) * (torch.zeros_like(acts[n]) if g is None else g)
            per_layer.append(a.sum((0, 3)).T if s == "z" else a.sum((0, 2)))  # [head, pos] or [pos]
        out[s] = torch.stack(per_layer)
    return out


class _Stop(Exception):
    """Raised by a hook once everything wanted is cached: the rest of the forward is not needed."""


def _cache_only(model: nn.Module, tokens: Tensor, names: list[str]) -> dict[str, Tensor]:
    """The activations at `names`, running the model only as far as the last of them."""
    cache: dict[str, Tensor] = {}
    wanted = set(names)

    def keep(x: Tensor, hook: HookPoint) -> None:
        cache[hook.name] = x.detach()
        if len(cache) == len(wanted):
            raise _Stop

    try:
        with torch.no_grad():
            run_with_hooks(model, tokens, [(names, keep)])
    except _Stop:
        pass
    return cache


# ── checks ───────────────────────────────────────────────────────────────────
def _inputs(model: nn.Module, clean: Tensor, corrupted: Tensor) -> tuple[Tensor, Tensor]:
    if clean.shape != corrupted.shape:
        raise SeedbedError(
            f"clean tokens are {list(clean.shape)} but corrupted are {list(corrupted.shape)}: patching needs inputs of the same shape"
        )
    if clean.dim() != 2:
        raise SeedbedError(f"tokens are {list(clean.shape)}: patching needs [batch, pos] (add a batch axis with tokens[None])")
    if model.training and model.cfg.dropout:  # type: ignore[attr-defined]
        raise SeedbedError("the model is in training mode with dropout, so patching would be random: call model.eval() first")
    dev = device_of(model)
    return clean.to(dev), corrupted.to(dev)


def _read_positions(positions: Sequence[int] | None, T: int, device: torch.device) -> Tensor:
    """The positions the metric reads, sorted, as indices in 0..T-1 (negative ones count from the end)."""
    if positions is None:
        return torch.arange(T, device=device)
    wanted = [int(p) for p in positions]
    bad = [p for p in wanted if not -T <= p < T]
    if bad or not wanted:
        raise SeedbedError(f"metric_positions {wanted} must be positions of the {T}-token input (0..{T - 1}, or -{T}..-1)")
    return torch.tensor(sorted({p % T for p in wanted}), device=device)


def _check_site(model: nn.Module, site: str) -> None:
    if site not in SITES:
        raise SeedbedError(f"unknown patching site '{site}': choose one of {', '.join(SITES)}")
    if site == "mlp_out" and model.cfg.attn_only:  # type: ignore[attr-defined]
        raise SeedbedError("site 'mlp_out' does not exist: the model is attention-only")


def _scalar(v: Tensor | float) -> Tensor:
    v = torch.as_tensor(v)
    if v.numel() != 1:
        raise SeedbedError(f"the metric returned shape {list(v.shape)}: it must return one number for the batch (reduce with .mean() or .sum())")
    return v.reshape(())
