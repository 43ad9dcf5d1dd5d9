"""Head scores: one number per attention head, each a [n_layers, n_heads] tensor.

Two kinds. *Pattern scores* (previous-token, induction, duplicate-token) run the
model once on made-up sequences whose right answer is known, caching only the
attention patterns, and average the attention that lands where the behaviour
says it should (Olsson et al. 2022, "In-context learning and induction heads").
*Weight scores* (copying, composition) read the weights alone (Elhage et al. 2021,
"A mathematical framework for transformer circuits").

Pattern scores are cheap enough to call from an observer during growth: one
forward pass, in eval mode, with only the `hook_pattern` hooks attached.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from seedbed.errors import SeedbedError
from seedbed.hooks import run_with_cache
from seedbed.model import Transformer, device_of, evaluating

Kind = Literal["q", "k", "v"]

DEFAULT_BATCH = 16
MAX_DEFAULT_LENGTH = 32


# ── the sequences ────────────────────────────────────────────────────────────
def _draw(d_vocab: int, shape: tuple[int, int], g: torch.Generator, bos: int | None, distinct: bool) -> Tensor:
    """Random tokens, never `bos`; each row without repeats if `distinct` and the vocabulary allows."""
    n_choices = d_vocab - (bos is not None)
    if n_choices < 1:
        raise SeedbedError(f"d_vocab={d_vocab} leaves no tokens besides BOS: a vocabulary needs at least 2 tokens")
    if distinct and shape[1] <= n_choices:
        t = torch.rand(shape[0], n_choices, generator=g).argsort(dim=1)[:, : shape[1]]
    else:
        t = torch.randint(0, n_choices, shape, generator=g)
    return t if bos is None else t + (t >= bos).long()  # skip over the BOS id


def _with_bos(t: Tensor, bos: int | None) -> Tensor:
    return t if bos is None else torch.cat([torch.full((len(t), 1), bos, dtype=t.dtype), t], dim=1)


def default_length(model: Transformer, bos: int | None = 0) -> int:
    """L for the repeated sequences: as long as fits twice in n_ctx (after BOS), at most 32."""
    return min(MAX_DEFAULT_LENGTH, (model.cfg.n_ctx - (bos is not None)) // 2)


def random_tokens(d_vocab: int, length: int, batch: int = DEFAULT_BATCH, seed: int = 0, bos: int | None = 0) -> Tensor:
    """[batch, 1 + length]: BOS then uniform random tokens (any but BOS). No BOS if `bos` is None."""
    g = torch.Generator().manual_seed(seed)
    return _with_bos(_draw(d_vocab, (batch, length), g, bos, distinct=False), bos)


def repeated_tokens(d_vocab: int, length: int, batch: int = DEFAULT_BATCH, seed: int = 0, bos: int | None = 0) -> Tensor:
    """[batch, 1 + 2·length]: BOS, L random tokens, the same L tokens again.

    Each copy holds L *distinct* tokens when the vocabulary (less BOS) has that many,
    so every token in the second copy has exactly one earlier occurrence and the
    induction and duplicate targets are unambiguous; otherwise tokens may repeat.
    """
    if length < 1:
        raise SeedbedError(f"length={length}: the repeated half needs at least 1 token (is n_ctx at least 3?)")
    g = torch.Generator().manual_seed(seed)
    half = _draw(d_vocab, (batch, length), g, bos, distinct=True)
    return _with_bos(torch.cat([half, half], dim=1), bos)


# ── pattern scores ───────────────────────────────────────────────────────────
def patterns(model: Transformer, tokens: Tensor) -> Tensor:
    """All attention patterns as [n_layers, batch, head, query, key]: one forward, eval mode."""
    tokens = tokens.to(device_of(model))
    if tokens.shape[1] > model.cfg.n_ctx:
        raise SeedbedError(f"sequences of {tokens.shape[1]} tokens do not fit n_ctx={model.cfg.n_ctx}: pass a smaller length")
    with evaluating(model):
        _, cache = run_with_cache(model, tokens, names=lambda n: n.endswith("hook_pattern"))
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)])


def _stripe(pattern: Tensor, back: int, first_query: int) -> Tensor:
    """Mean attention from each query q >= first_query to key q - back: [n_layers, n_heads]."""
    diag = pattern.diagonal(offset=-back, dim1=-2, dim2=-1)  # [layer, batch, head, q] for q = back..T-1
    return diag[..., first_query - back :].mean(dim=(1, 3)).float()


def _previous(pattern: Tensor, bos: int | None) -> Tensor:
    # With BOS, position 1's previous token is BOS, where heads rest when they have nothing
    # to do; counting it would credit resting as previous-token attention, so start at 2.
    first = 2 if bos is not None else 1
    if pattern.shape[-1] <= first:
        raise SeedbedError(
            f"the previous-token score needs sequences of at least {first + 1} tokens{' (after BOS, 2 more)' if bos is not None else ''}, "
            f"but these have {pattern.shape[-1]}: give longer tokens (the model's n_ctx is the limit)"
        )
    return _stripe(pattern, 1, first)


def _repeat_length(tokens: Tensor, bos: int | None) -> int:
    """L of BOS + x + x sequences given by a caller, checking that they are such sequences."""
    offset = int(bos is not None)
    L = (tokens.shape[1] - offset) // 2
    if L < 1 or offset + 2 * L != tokens.shape[1] or not torch.equal(tokens[:, offset : offset + L], tokens[:, offset + L :]):
        raise SeedbedError(
            "tokens must be BOS + L tokens + the same L tokens again (no BOS if bos=None): "
            "make them with seedbed.read.repeated_tokens, or leave tokens=None"
        )
    return L


def _induction(pattern: Tensor, L: int, bos: int | None) -> Tensor:
    # second copy starts at offset + L; a token there at q first occurred at q - L,
    # and the token after that occurrence sits at q - L + 1
    return _stripe(pattern, L - 1, int(bos is not None) + L)


def _duplicate(pattern: Tensor, L: int, bos: int | None) -> Tensor:
    return _stripe(pattern, L, int(bos is not None) + L)


def _repeated_or(model: Transformer, tokens: Tensor | None, length: int | None, batch: int, seed: int, bos: int | None) -> tuple[Tensor, int]:
    if tokens is None:
        L = default_length(model, bos) if length is None else length
        return repeated_tokens(model.cfg.d_vocab, L, batch, seed, bos), L
    return tokens, _repeat_length(tokens, bos)


def previous_token_scores(
    model: Transformer, tokens: Tensor | None = None, *, length: int | None = None, batch: int = DEFAULT_BATCH, seed: int = 0, bos: int | None = 0
) -> Tensor:
    """Mean attention from position i to i − 1, per head: [n_layers, n_heads], in 0..1.

    A previous-token head puts nearly all its attention one back (score ≈ 1); it is
    the first half of an induction circuit (Olsson et al. 2022; Elhage et al. 2021).
    On `tokens` [batch, pos] if given, else on BOS + 2L uniform random tokens
    (L = `default_length`). Queries from position 2 when there is a BOS, since
    position 1's previous token is the BOS where idle heads rest.
    """
    if tokens is None:
        L = default_length(model, bos) if length is None else length
        tokens = random_tokens(model.cfg.d_vocab, 2 * L, batch, seed, bos)
    return _previous(patterns(model, tokens), bos)


def induction_scores(
    model: Transformer, tokens: Tensor | None = None, *, length: int | None = None, batch: int = DEFAULT_BATCH, seed: int = 0, bos: int | None = 0
) -> Tensor:
    """Prefix-matching attention on repeated random tokens, per head: [n_layers, n_heads].

    On BOS + x + x (x: L random tokens, `repeated_tokens`), the mean attention from
    each token of the second copy to the token right *after* its earlier occurrence
    — where an induction head looks, so it can copy what came next (Olsson et al.
    2022). ≈ 1 for a clean induction head; about 1/position for a head attending
    uniformly. `tokens` may be given, but must have that shape.
    """
    tokens, L = _repeated_or(model, tokens, length, batch, seed, bos)
    return _induction(patterns(model, tokens), L, bos)


def duplicate_token_scores(
    model: Transformer, tokens: Tensor | None = None, *, length: int | None = None, batch: int = DEFAULT_BATCH, seed: int = 0, bos: int | None = 0
) -> Tensor:
    """Mean attention from each token of the second copy to its own earlier occurrence.

    Same sequences as `induction_scores`; a duplicate-token head finds earlier
    copies of the current token (Olsson et al. 2022). [n_layers, n_heads], 0..1.
    """
    tokens, L = _repeated_or(model, tokens, length, batch, seed, bos)
    return _duplicate(patterns(model, tokens), L, bos)


def pattern_scores(
    model: Transformer, tokens: Tensor | None = None, *, length: int | None = None, batch: int = DEFAULT_BATCH, seed: int = 0, bos: int | None = 0
) -> dict[str, Tensor]:
    """Previous-token, induction and duplicate-token scores from one forward pass.

    All three on the repeated sequences (so the previous-token score here is measured
    on BOS + x + x, not on plain random tokens); meant for observers during growth.
    """
    tokens, L = _repeated_or(model, tokens, length, batch, seed, bos)
    pattern = patterns(model, tokens)
    return {
        "previous_token": _previous(pattern, bos),
        "induction": _induction(pattern, L, bos),
        "duplicate_token": _duplicate(pattern, L, bos),
    }


# ── weight scores ────────────────────────────────────────────────────────────
def _reading(model: Transformer, layer: int, W: Tensor) -> Tensor:
    """A weight reading the residual through block `layer`'s ln1, with that LN folded in.

    LayerNorm centres x, divides by a positive scalar and multiplies by its weight:
    centring is the projection P = I − 11ᵀ/d, and the weight is diag(w), so a reading
    matrix W becomes P·diag(w)·W. The scalar is dropped: it rescales a whole position
    and leaves the normalised scores below unchanged. LN biases are dropped too (they
    are not part of any bilinear map).
    """
    return _fold(model.blocks[layer].ln1 if model.cfg.layernorm else None, W)


def _fold(ln: nn.Module | None, W: Tensor) -> Tensor:
    W = W.detach().double()
    if ln is None:
        return W
    W = ln.weight.detach().double().unsqueeze(-1) * W  # diag(w) W, on the d_model axis (second to last)
    return W - W.mean(dim=-2, keepdim=True)  # P W


def _weights(model: Transformer) -> dict[str, Tensor]:
    """Per-head W_Q, W_K, W_V [layer, head, d_model, d_head] (LN folded) and W_O [layer, head, d_head, d_model]."""
    out: dict[str, list[Tensor]] = {"Q": [], "K": [], "V": [], "O": []}
    for l, block in enumerate(model.blocks):
        for name in "QKV":
            out[name].append(_reading(model, l, getattr(block.attn, f"W_{name}")))
        out["O"].append(block.attn.W_O.detach().double())
    return {k: torch.stack(v) for k, v in out.items()}


def copying_scores(model: Transformer) -> Tensor:
    """How much each head's direct OV circuit copies tokens: [n_layers, n_heads], in −1..1.

    Elhage et al. 2021: take the full OV circuit W_E W_V^h W_O^h W_U ([d_vocab, d_vocab],
    row convention: a token's embedding in, logits out) and its eigenvalues λ; the
    score is Σλ / Σ|λ| (Σλ is real: complex ones come in conjugate pairs). +1 when all
    eigenvalues are positive — attending to a token raises that token's logit, a
    copying head; −1 for an anti-copying head. The nonzero eigenvalues of a product
    are unchanged by cycling its factors, so they are computed from the small
    [d_head, d_head] matrix W_O W_U W_E W_V instead.

    LayerNorm: ln1 of the head's block (before W_V) and ln_final (before W_U) are
    folded in — their weight and their centring; their bias and per-position scale are
    left out (the scale multiplies the whole matrix by a positive number, which does
    not change the score). Only the direct path: embedding → this head → unembedding.
    """
    W = _weights(model)
    W_E = model.embed.weight.detach().double()  # [d_vocab, d_model]
    W_U = _fold(model.ln_final if model.cfg.layernorm else None, model.unembed.weight.detach().T)  # [d_model, d_vocab]
    small = W["O"] @ (W_U @ (W_E @ W["V"]))  # [layer, head, d_head, d_head]
    eig = torch.linalg.eigvals(small)
    total = eig.abs().sum(-1)
    return torch.where(total > 0, eig.sum(-1).real / total.clamp_min(1e-300), torch.zeros_like(total)).float()


def _frobenius(A: Tensor, C: Tensor, B: Tensor) -> Tensor:
    """||A C Bᵀ||_F for tall thin A, B [..., d_model, r] and small C [..., r, r], cheaply.

    An orthonormal factor does not change a Frobenius norm, so each tall factor is
    replaced by its R from a QR decomposition: ||A C Bᵀ|| = ||R_A C R_Bᵀ||.
    """
    R_A, R_B = torch.linalg.qr(A, mode="r")[1], torch.linalg.qr(B, mode="r")[1]
    return torch.linalg.matrix_norm(R_A @ C @ R_B.mT)


def _composition(Q: Tensor, K: Tensor, V: Tensor, O: Tensor, kind: Kind, earlier: tuple, later: tuple) -> Tensor:
    """Composition score of heads `earlier` into heads `later`, all broadcast together.

    Row convention: W_OV = W_V W_O, W_QK = W_Q W_Kᵀ. Q: ||W_OV¹ W_QK²||, K: ||W_OV¹ W_QK²ᵀ||,
    V: ||W_OV¹ W_OV²||, each divided by the product of the two matrices' norms.
    """
    V1, O1 = V[earlier], O[earlier]
    Q2, K2, V2, O2 = Q[later], K[later], V[later], O[later]
    eye = torch.eye(O1.shape[-2], dtype=O1.dtype)
    if kind == "q":  # the earlier head writes what the later head's queries read
        num, right = _frobenius(V1, O1 @ Q2, K2), _frobenius(Q2, eye, K2)
    elif kind == "k":  # … its keys read
        num, right = _frobenius(V1, O1 @ K2, Q2), _frobenius(Q2, eye, K2)
    elif kind == "v":  # … its values read
        num, right = _frobenius(V1, O1 @ V2, O2.mT), _frobenius(V2, eye, O2.mT)
    else:
        raise SeedbedError(f"composition kind '{kind}' is unknown: use 'q', 'k' or 'v'")
    left = _frobenius(V1, eye, O1.mT)
    denom = left * right
    return torch.where(denom > 0, num / denom.clamp_min(1e-300), torch.zeros_like(num))


def composition_scores(model: Transformer, kind: Kind) -> Tensor:
    """Q-, K- or V-composition between every earlier head and every later one.

    [layer1, head1, layer2, head2]: how much of what head (layer1, head1) writes is
    read by the queries, keys or values of head (layer2, head2) (Elhage et al. 2021):
    Q: ||W_OV¹ W_QK²||_F, K: ||W_OV¹ W_QK²ᵀ||_F, V: ||W_OV¹ W_OV²||_F, each divided by
    ||W_OV¹||_F ||W_·²||_F (row convention: W_OV = W_V W_O, W_QK = W_Q W_Kᵀ). Zero
    where layer1 >= layer2. ln1 of each block is folded into its W_Q, W_K, W_V (weight
    and centring), as for `copying_scores`. Compare with `composition_baseline`: random
    matrices already score well above 0.
    """
    W = _weights(model)
    n_layers = W["Q"].shape[0]
    # earlier heads on the first two axes, later heads on the last two
    earlier = (slice(None), slice(None), None, None)
    later = (None, None, slice(None), slice(None))
    scores = _composition(W["Q"], W["K"], W["V"], W["O"], kind, earlier, later)
    l1 = torch.arange(n_layers).view(-1, 1, 1, 1)
    l2 = torch.arange(n_layers).view(1, 1, -1, 1)
    return torch.where(l1 < l2, scores, torch.zeros_like(scores)).float()


def composition_baseline(model: Transformer, kind: Kind, samples: int = 256, seed: int = 0, quantile: float | None = None) -> float:
    """The mean (or the given quantile) composition score of random heads with this model's shapes.

    W_Q, W_K, W_V [d_model, d_head] and W_O [d_head, d_model] drawn i.i.d. Gaussian
    (the score does not depend on their scale), `samples` independent pairs, seeded.
    A learned composition is worth mentioning when it is well above this.
    """
    d_model, d_head = model.cfg.d_model, model.cfg.d_head
    g = torch.Generator().manual_seed(seed)
    tall = lambda: torch.randn(2, samples, d_model, d_head, generator=g, dtype=torch.float64)  # noqa: E731
    Q, K, V, O = tall(), tall(), tall(), tall().mT
    scores = _composition(Q, K, V, O, kind, (0,), (1,)).flatten()
    return (scores.mean() if quantile is None else scores.quantile(quantile)).item()
