import math

import pytest
import torch

from seedbed.conditions import Architecture
from seedbed.errors import SeedbedError
from seedbed.grow import grow
from seedbed.model import Transformer
from seedbed.read.load import checkpoint_steps, load
from seedbed.read.scores import (
    composition_baseline,
    composition_scores,
    copying_scores,
    default_length,
    duplicate_token_scores,
    induction_scores,
    pattern_scores,
    previous_token_scores,
    random_tokens,
    repeated_tokens,
)
from seedbed.soil import resolve

from conftest import tiny

V, T = 16, 16  # vocabulary and context of the hand-built models


def set_head(model: Transformer, layer: int, head: int, W_Q=None, W_K=None, W_V=None, W_O=None) -> None:
    """Write one head's weights, given in TransformerLens shapes ([d_model, d_head], W_O [d_head, d_model])."""
    attn = model.blocks[layer].attn
    inner, dh = attn.n_heads * attn.d_head, attn.d_head
    rows = slice(head * dh, (head + 1) * dh)
    with torch.no_grad():
        for i, W in enumerate([W_Q, W_K, W_V]):
            if W is not None:
                attn.qkv.weight[i * inner :][rows] = W.T
        if W_O is not None:
            attn.out.weight[:, rows] = W_O.T


def hand_built() -> Transformer:
    """An induction circuit built by hand; no LayerNorm, residual = [token | position | previous token].

    L0H0 attends to the previous position and copies its token into the "previous
    token" subspace; L0H1 attends to earlier copies of the current token (not itself);
    L1H0 matches the current token against each position's previous token: induction.
    Every other head has zero weights, so attends uniformly.
    """
    arch = Architecture(n_layers=2, d_model=3 * V, n_heads=2, d_head=2 * V, n_ctx=T, d_vocab=V, attn_only=True, layernorm=False)
    model = Transformer(arch, seed=0)
    tok, pos, prev = slice(0, V), slice(V, 2 * V), slice(2 * V, 3 * V)
    eye, sharp = torch.eye(V), 40.0 * math.sqrt(2 * V)  # scores of 40 after the 1/sqrt(d_head)
    zeros = lambda: torch.zeros(3 * V, 2 * V)  # noqa: E731
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight[:, tok] = eye
        model.pos_embed.weight[:, pos] = torch.eye(T)
        model.unembed.weight[:, tok] = eye
    Q, K, Vv, O = zeros(), zeros(), zeros(), torch.zeros(2 * V, 3 * V)
    Q[pos, :T] = sharp * torch.eye(T)
    K[V : 2 * V - 1, 1:T] = torch.eye(T - 1)  # the key at j looks like the query at j + 1
    Vv[tok, :V] = eye
    O[:V, prev] = eye
    set_head(model, 0, 0, Q, K, Vv, O)
    Q, K = zeros(), zeros()
    Q[tok, :V], K[tok, :V] = sharp * eye, eye  # same token…
    Q[pos, V:], K[pos, V:] = sharp * torch.eye(T), -torch.eye(T)  # …but not this position
    set_head(model, 0, 1, Q, K)
    Q, K = zeros(), zeros()
    Q[tok, :V], K[prev, :V] = sharp * eye, eye
    set_head(model, 1, 0, Q, K)
    return model.eval()


def random_model(**arch) -> Transformer:
    cond, _ = resolve(tiny(architecture=arch))
    return Transformer(cond.architecture, seed=3).eval()


# ── sequences ────────────────────────────────────────────────────────────────
def test_sequences_are_seeded_and_shaped():
    r = repeated_tokens(16, 7, batch=5, seed=1)
    assert r.shape == (5, 15) and (r[:, 0] == 0).all()
    assert torch.equal(r[:, 1:8], r[:, 8:])
    assert all(len(set(row[1:8].tolist())) == 7 for row in r)  # distinct within a copy
    assert ((r[:, 1:] >= 1) & (r[:, 1:] < 16)).all()
    assert torch.equal(r, repeated_tokens(16, 7, batch=5, seed=1))
    assert not torch.equal(r, repeated_tokens(16, 7, batch=5, seed=2))
    other_bos = repeated_tokens(16, 7, batch=50, bos=3)
    assert (other_bos[:, 0] == 3).all() and (other_bos[:, 1:] != 3).all() and (other_bos[:, 1:] == 0).any()
    assert repeated_tokens(16, 7, bos=None).shape == (16, 14)
    assert repeated_tokens(4, 7).shape == (16, 15)  # too few tokens to be distinct: they repeat
    plain = random_tokens(16, 10, batch=3)
    assert plain.shape == (3, 11) and (plain[:, 0] == 0).all() and (plain[:, 1:] > 0).all()


def test_default_length_fits_the_context():
    assert default_length(random_model()) == 7  # n_ctx 16: BOS + 7 + 7
    assert default_length(random_model(), bos=None) == 8


# ── pattern scores ───────────────────────────────────────────────────────────
def test_hand_built_heads_score_one_where_built():
    model = hand_built()
    prev, ind, dup = previous_token_scores(model), induction_scores(model), duplicate_token_scores(model)
    assert prev.shape == ind.shape == dup.shape == (2, 2)
    assert prev[0, 0] > 0.99 and ind[1, 0] > 0.99 and dup[0, 1] > 0.99
    for scores, built in [(prev, (0, 0)), (ind, (1, 0)), (dup, (0, 1))]:
        others = scores.clone()
        others[built] = 0
        assert others.max() < 0.2  # uniform attention gets about 1/position
    # without BOS, position 0 is its own "previous token", so the first query of the second copy
    # splits its attention between positions 0 and 1: 1/2 on one query in 8
    assert induction_scores(model, bos=None)[1, 0].item() == pytest.approx(15 / 16, abs=0.01)
    assert previous_token_scores(model, bos=None)[0, 0] > 0.99


def test_one_forward_gives_all_three():
    model = hand_built()
    together = pattern_scores(model, length=6, batch=4, seed=5)
    assert torch.equal(together["induction"], induction_scores(model, length=6, batch=4, seed=5))
    assert torch.equal(together["duplicate_token"], duplicate_token_scores(model, length=6, batch=4, seed=5))
    assert together["previous_token"][0, 0] > 0.99


def test_caller_tokens():
    model = hand_built()
    seqs = repeated_tokens(V, 5, batch=3, seed=9)
    assert torch.equal(induction_scores(model, seqs), induction_scores(model, length=5, batch=3, seed=9))
    assert previous_token_scores(model, random_tokens(V, 12, batch=2))[0, 0] > 0.99
    with pytest.raises(SeedbedError, match="BOS \\+ L tokens \\+ the same L tokens"):
        induction_scores(model, random_tokens(V, 12, batch=2))
    with pytest.raises(SeedbedError, match="n_ctx"):
        induction_scores(model, length=10)


def test_a_random_model_has_no_induction_or_previous_token_heads():
    model = random_model()
    scores = pattern_scores(model)
    assert scores["induction"].max() < 0.15
    assert scores["previous_token"].max() < 0.2
    assert ((scores["duplicate_token"] >= 0) & (scores["duplicate_token"] <= 1)).all()


def test_scoring_leaves_training_mode_as_it_was():
    model = random_model(dropout=0.5).train()
    a, b = induction_scores(model), induction_scores(model)
    assert torch.equal(a, b)  # no dropout while scoring
    assert model.training


# ── weight scores ────────────────────────────────────────────────────────────
def copier(sign: float) -> Transformer:
    """One layer; head 0's OV circuit maps each token to itself times `sign`; head 1 is zero."""
    arch = Architecture(n_layers=1, d_model=V, n_heads=2, d_head=V, n_ctx=T, d_vocab=V, attn_only=True, layernorm=False)
    model = Transformer(arch, seed=0)
    with torch.no_grad():
        model.embed.weight.copy_(torch.eye(V))
        model.unembed.weight.copy_(torch.eye(V))
    set_head(model, 0, 0, W_V=torch.eye(V), W_O=sign * torch.eye(V))
    set_head(model, 0, 1, W_V=torch.zeros(V, V))
    return model


def test_copying_score_of_a_copier_and_an_anti_copier():
    assert copying_scores(copier(1.0))[0, 0].item() == pytest.approx(1.0)
    assert copying_scores(copier(-1.0))[0, 0].item() == pytest.approx(-1.0)
    assert copying_scores(copier(1.0))[0, 1].item() == 0.0  # a zero circuit scores 0, not NaN


def fold(W: torch.Tensor, ln) -> torch.Tensor:
    """P·diag(w)·W: LayerNorm's centring and weight, folded into a reading matrix."""
    d = W.shape[0]
    P = torch.eye(d, dtype=torch.float64) - 1.0 / d
    return P @ torch.diag(ln.weight.detach().double()) @ W.detach().double()


def with_random_ln(model: Transformer) -> Transformer:
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln" in name or name.startswith("ln_final"):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
    return model


def test_copying_score_matches_the_full_vocab_circuit():
    """The [d_head, d_head] shortcut gives the same score as the eigenvalues of the full [d_vocab, d_vocab] circuit."""
    model = with_random_ln(random_model(n_layers=2))
    W_E = model.embed.weight.detach().double()
    W_U = fold(model.unembed.weight.T, model.ln_final)
    got = copying_scores(model)
    for l in range(2):
        attn = model.blocks[l].attn
        for h in range(2):
            full = W_E @ fold(attn.W_V[h], model.blocks[l].ln1) @ attn.W_O[h].detach().double() @ W_U
            eig = torch.linalg.eigvals(full)
            assert got[l, h].item() == pytest.approx((eig.sum().real / eig.abs().sum()).item(), abs=1e-5)


def test_composition_scores_match_the_definition():
    model = with_random_ln(random_model(n_layers=3))
    W = {}
    for l, block in enumerate(model.blocks):
        a = block.attn
        for h in range(2):
            Q, K, Vv = (fold(m[h], block.ln1) for m in (a.W_Q, a.W_K, a.W_V))
            W[l, h] = {"OV": Vv @ a.W_O[h].detach().double(), "QK": Q @ K.T}
    norm = torch.linalg.matrix_norm
    for kind in "qkv":
        got = composition_scores(model, kind)
        assert got.shape == (3, 2, 3, 2)
        for (l1, h1), a in W.items():
            for (l2, h2), b in W.items():
                if l1 >= l2:
                    assert got[l1, h1, l2, h2] == 0
                    continue
                right = {"q": b["QK"], "k": b["QK"].T, "v": b["OV"]}[kind]
                want = norm(a["OV"] @ right) / (norm(a["OV"]) * norm(right))
                assert got[l1, h1, l2, h2].item() == pytest.approx(want.item(), abs=1e-5)


def test_hand_built_k_composition_stands_out():
    """L1H0's keys read exactly what L0H0 writes: K-composition, not Q."""
    model = hand_built()
    k, q = composition_scores(model, "k"), composition_scores(model, "q")
    assert k[0, 0, 1, 0].item() == pytest.approx(0.25)  # = 1/sqrt(rank 16): the most a rank-16 map can score
    assert q[0, 0, 1, 0].item() == pytest.approx(0.0)
    assert composition_scores(model, "v")[0, 0, 1, 0] == 0  # L1H0 has no OV circuit
    baseline = composition_baseline(model, "k")
    assert 0 < baseline < 0.25
    assert baseline == composition_baseline(model, "k")  # seeded
    with pytest.raises(SeedbedError, match="use 'q', 'k' or 'v'"):
        composition_scores(model, "x")


# ── on grown runs ────────────────────────────────────────────────────────────
def test_scores_on_a_tiny_grown_run(runs):
    """The tiny run is too short to grow induction heads; the scores still read every checkpoint."""
    grow(tiny(), runs_dir=runs, name="t", progress=False)
    for step in (0, checkpoint_steps(runs / "t")[-1]):
        model = load(runs / "t", step).model
        scores = pattern_scores(model)
        for s in scores.values():
            assert s.shape == (2, 2) and ((s >= 0) & (s <= 1)).all()
        assert ((copying_scores(model).abs()) <= 1).all()
        assert composition_scores(model, "k").shape == (2, 2, 2, 2)


@pytest.fixture
def one_thread():
    """Grow on one thread: ~25 s here, where two threads on two busy shared cores took minutes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_induction_heads_grow(runs, one_thread):
    """A smaller examples/induction.toml (n_ctx 48, 800 steps): induction heads form by step ~600."""
    cond = tiny(
        soil={"vocab_size": 64, "block_min": 6, "block_max": 24, "prefix_max": 12},
        architecture={"n_layers": 2, "d_model": 64, "n_heads": 4, "n_ctx": 48, "attn_only": True},
        optimizer={"lr": 1e-3, "betas": [0.9, 0.98]},
        schedule={"steps": 800, "batch_size": 32, "warmup_steps": 100, "eval_every": 800, "eval_batches": 1},
        checkpoints={"log_until": 0, "every": 800},
    )
    grow(cond, runs_dir=runs, name="ind", progress=False)
    before, after = (load(runs / "ind", s).model for s in (0, 800))
    b, a = pattern_scores(before), pattern_scores(after)
    assert b["induction"].max() < 0.05
    assert a["induction"][1].max() > 0.4  # an induction head in layer 1 (0.54 when written)
    assert a["previous_token"][0].max() > 2 * b["previous_token"][0].max()  # and its partner in layer 0
    # the layer-1 heads' keys read what the layer-0 heads write (0.23 against 0.12 when written)
    assert composition_scores(after, "k")[0, :, 1].max() > 1.5 * composition_baseline(after, "k")
