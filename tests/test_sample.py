"""seedbed.sample: greedy and seeded sampling with a KV cache, checked against a plain loop that re-runs everything."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny

import seedbed
from seedbed.errors import SeedbedError
from seedbed.grow import grow
from seedbed.hooks import hooks
from seedbed.model import KVCache, Transformer
from seedbed.read import load
from seedbed.sample import sample
from seedbed.soil import resolve

ARCHS = [
    {"attn_only": True},
    {"attn_only": False, "act": "gelu"},
    {"attn_only": False, "act": "relu", "layernorm": False, "tied_embeddings": True},
]
N_CTX, VOCAB = 16, 16  # tiny()'s


def model_for(**arch) -> Transformer:
    cond, _ = resolve(tiny(architecture=arch))
    return Transformer(cond.architecture, seed=7).eval()


def prefix(n=3, t=5) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def naive(model: Transformer, tokens: torch.Tensor, max_new: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy the plain way: re-run the last n_ctx tokens at every step. Returns the tokens and each step's logits."""
    seq, steps = tokens, []
    for _ in range(max_new):
        logits = model(seq[:, -model.cfg.n_ctx:])[:, -1]
        steps.append(logits)
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq, steps


def sampled_logits(model: Transformer, tokens: torch.Tensor, max_new: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """seedbed.sample, and the logits of each step read from the last residual stream (hooks see new positions)."""
    last: list[torch.Tensor] = []
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with hooks(model, [(name, lambda x, hook: last.append(model.unembed(model.ln_final(x[:, -1]))))]):
        out = sample(model, tokens, max_new)
    return out, last


def assert_same_as_naive(model: Transformer, tokens: torch.Tensor, max_new: int) -> None:
    expected, expected_logits = naive(model, tokens, max_new)
    out, logits = sampled_logits(model, tokens, max_new)
    assert torch.equal(out, expected)
    assert len(logits) == max_new
    for got, want in zip(logits, expected_logits):
        assert torch.allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_forward_equals_full_forward_fast_and_explicit(arch) -> None:
    model = model_for(**arch)
    x = prefix(t=N_CTX)
    full = model(x)
    for explicit in (False, True):  # hooking the pattern makes attention take its explicit path
        patterns: list[torch.Tensor] = []
        fns = [(lambda n: n.endswith("hook_pattern"), lambda p, hook, kept=patterns: kept.append(p))] if explicit else []
        cache = KVCache.empty(model.cfg.n_layers)
        with hooks(model, fns):  # uneven chunks: the causal mask must be offset by what the cache holds
            parts = [model(x[:, a:b], cache) for a, b in ((0, 5), (5, 6), (6, 11), (11, 16))]
        assert cache.length == N_CTX
        assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)
        if explicit:
            assert [tuple(p.shape[2:]) for p in patterns[:: model.cfg.n_layers]] == [(5, 5), (1, 6), (5, 11), (5, 16)]


def test_a_cached_forward_past_n_ctx_is_one_line() -> None:
    model = model_for()
    cache = KVCache.empty(model.cfg.n_layers)
    model(prefix(t=10), cache)
    with pytest.raises(SeedbedError, match="after 10 cached but the model's n_ctx is 16") as e:
        model(prefix(t=7), cache)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_the_naive_loop(arch) -> None:
    assert_same_as_naive(model_for(**arch), prefix(), N_CTX - 5)


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    grow(tiny(), runs_dir=runs, name="t", progress=False)
    return runs / "t"


def test_greedy_equals_the_naive_loop_on_a_grown_model(grown: Path) -> None:
    g = load(grown)
    tokens = g.soil.eval_batch(0, 4).inputs[:, :6]
    assert_same_as_naive(g.model, tokens, 10)  # within the context
    assert_same_as_naive(g.model, tokens, 30)  # and sliding past it


def test_the_window_slides_past_n_ctx_as_the_naive_loop_does() -> None:
    model = model_for(attn_only=False)
    assert_same_as_naive(model, prefix(t=10), 25)
    assert_same_as_naive(model, prefix(t=N_CTX + 4), 3)  # a prefix longer than the context: its last n_ctx tokens
    assert sample(model, prefix(t=10), 25).shape == (3, 35)


def positions_run(model: Transformer, tokens: torch.Tensor, max_new: int) -> int:
    """How many token positions the model's forwards ran while sampling."""
    seen = [0]

    def count(x: torch.Tensor, hook) -> None:
        seen[0] += x.shape[1]

    with hooks(model, [("hook_embed", count)]):
        sample(model, tokens, max_new)
    return seen[0]


def test_the_cache_makes_sampling_linear() -> None:
    model = model_for()
    p = 4
    for n in (1, 6, 13):  # within the context: the prefix once, then one position per new token
        assert positions_run(model, prefix(t=p), n) == p + n - 1
    naive_cost = sum(p + i for i in range(13))  # what re-running the prefix at every step costs
    assert naive_cost == 130 and positions_run(model, prefix(t=p), 13) == 16
    # past the context every step re-runs the window (n_ctx positions), as the naive windowed loop does
    assert positions_run(model, prefix(t=p), 13 + 4) == 16 + 4 * N_CTX


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    model = model_for(attn_only=False)
    state = torch.get_rng_state()
    a = sample(model, prefix(), 10, temperature=1.0, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)  # the global RNG must not matter
    assert torch.equal(sample(model, prefix(), 10, temperature=1.0, seed=1), a)
    others = [sample(model, prefix(), 10, temperature=1.0, seed=s) for s in (2, 3)]
    assert all(not torch.equal(o, a) for o in others)
    assert not torch.equal(a, sample(model, prefix(), 10))  # a random model at temperature 1 is not greedy


def test_top_k_1_is_greedy_and_top_k_keeps_to_the_k_most_likely() -> None:
    model = model_for(attn_only=False)
    greedy = sample(model, prefix(), 10)
    assert torch.equal(sample(model, prefix(), 10, temperature=5.0, top_k=1, seed=0), greedy)
    out = sample(model, prefix(), 10, temperature=100.0, top_k=3, seed=0)  # nearly uniform among the 3
    with torch.no_grad():
        logits = model(out[:, :-1])[:, prefix().shape[1] - 1:]
    allowed = logits.topk(3, dim=-1).indices
    assert (allowed == out[:, prefix().shape[1]:, None]).any(-1).all()
    wide = sample(model, prefix(), 10, temperature=100.0, seed=0)  # without top_k, some token falls outside
    with torch.no_grad():
        wide_logits = model(wide[:, :-1])[:, prefix().shape[1] - 1:]
    assert not (wide_logits.topk(3, dim=-1).indices == wide[:, prefix().shape[1]:, None]).any(-1).all()


def test_stop_fills_the_row_and_ends_when_every_row_has_stopped() -> None:
    model = model_for(attn_only=False)
    full = sample(model, prefix(n=1), 10)[0]
    stop = int(full[5 + 3])  # the row's 4th new token
    first = 5 + (full[5:] == stop).nonzero()[0].item()
    out = sample(model, prefix(n=1), 10, stop=stop)[0]
    assert torch.equal(out, full[: first + 1])  # ends right after the stop token
    batch = sample(model, prefix(n=3), 10, stop=stop)
    plain = sample(model, prefix(n=3), 10)
    for row, want in zip(batch, plain):
        hit = (want[5:] == stop).nonzero()
        if len(hit):
            k = 5 + hit[0].item()
            assert torch.equal(row[: k + 1], want[: k + 1]) and (row[k:] == stop).all()
        else:
            assert torch.equal(row, want[: len(row)])


def test_mode_and_gradients_are_restored() -> None:
    cond, _ = resolve(tiny(architecture={"attn_only": False, "dropout": 0.5}))
    model = Transformer(cond.architecture, seed=7).train()
    out = sample(model, prefix(), 6)
    assert model.training and torch.is_grad_enabled() and not out.requires_grad
    assert torch.equal(out, sample(model.eval(), prefix(), 6))  # no dropout while sampling


def test_one_sequence_in_one_out_and_max_new_0() -> None:
    model = model_for()
    one = prefix(n=1)[0]
    assert torch.equal(sample(model, one, 4), sample(model, one[None], 4)[0])
    assert torch.equal(sample(model, prefix(), 0), prefix())


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new": -1}, "max_new is -1"),
    ({"temperature": -0.5}, "temperature is -0.5"),
    ({"temperature": float("nan")}, "temperature is nan"),
    ({"temperature": 1.0, "top_k": 0, "seed": 0}, "top_k is 0"),
    ({"temperature": 1.0}, "needs a seed"),
    ({"tokens": torch.tensor([[1, 2, VOCAB]])}, "vocabulary is 0…15"),
    ({"tokens": torch.tensor([[-1, 2]])}, "vocabulary is 0…15"),
    ({"tokens": torch.zeros(2, 0, dtype=torch.long)}, "prefix is empty"),
    ({"tokens": torch.zeros(2, 3)}, "give token ids as integers"),
    ({"tokens": torch.zeros(1, 2, 3, dtype=torch.long)}, "give \\[batch, pos\\]"),
    ({"stop": VOCAB}, "stop is 16"),
])
def test_bad_input_is_one_line(kwargs, message) -> None:
    args = {"tokens": prefix(), "max_new": 3, **kwargs}
    with pytest.raises(SeedbedError, match=message) as e:
        sample(model_for(), **args)
    assert "\n" not in str(e.value)


def test_top_level_export() -> None:
    model = model_for()
    assert torch.equal(seedbed.sample(model, prefix(), 4), sample(model, prefix(), 4))
    assert seedbed.sample.sample is sample  # the module stays reachable, as seedbed.grow.grow does
