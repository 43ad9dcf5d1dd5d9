import pytest
import torch

from seedbed.errors import SeedbedError
from seedbed.hooks import hooks, run_with_cache, run_with_hooks
from seedbed.model import Transformer
from seedbed.soil import resolve

from conftest import tiny

ARCHS = [
    {"attn_only": True},
    {"attn_only": False, "act": "gelu"},
    {"attn_only": False, "act": "relu", "layernorm": False},
    {"attn_only": False, "tied_embeddings": True},
    {"attn_only": True, "layernorm": False, "n_layers": 3, "d_head": 4},
]


def model_for(**arch) -> Transformer:
    cond, _ = resolve(tiny(architecture=arch))
    torch.manual_seed(123)  # the global RNG must not matter
    return Transformer(cond.architecture, seed=7)


def tokens(n=3, t=16, v=16):
    return torch.randint(0, v, (n, t), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_and_explicit_attention_agree(arch):
    model = model_for(**arch)
    x = tokens()
    fast = model(x)
    names = [n for n in model.hook_points if n.endswith("hook_pattern")]
    slow, cache = run_with_cache(model, x, names)
    assert set(cache) == set(names)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=0)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-6)
    assert (pattern.triu(1) == 0).all()  # causal


@pytest.mark.parametrize("arch", ARCHS)
def test_residual_stream_adds_up(arch):
    model = model_for(**arch)
    _, c = run_with_cache(model, tokens())
    for l in range(model.cfg.n_layers):
        pre, attn = c[f"blocks.{l}.hook_resid_pre"], c[f"blocks.{l}.hook_attn_out"]
        if model.cfg.attn_only:
            assert torch.allclose(pre + attn, c[f"blocks.{l}.hook_resid_post"], atol=1e-6)
            assert f"blocks.{l}.hook_resid_mid" not in c
        else:
            mid = c[f"blocks.{l}.hook_resid_mid"]
            assert torch.allclose(pre + attn, mid, atol=1e-6)
            assert torch.allclose(mid + c[f"blocks.{l}.hook_mlp_out"], c[f"blocks.{l}.hook_resid_post"], atol=1e-6)
        z = c[f"blocks.{l}.attn.hook_z"]
        assert z.shape == (3, 16, model.cfg.n_heads, model.cfg.d_head)
        # attn_out is the sum over heads of z @ W_O plus the bias
        attn_mod = model.blocks[l].attn
        per_head = torch.einsum("bphd,hdm->bpm", z, attn_mod.W_O) + attn_mod.out.bias
        assert torch.allclose(per_head, attn, atol=1e-5)


def test_transformerlens_hook_names_and_shapes():
    model = model_for(attn_only=False)
    _, c = run_with_cache(model, tokens())
    for name in ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.1.attn.hook_q", "blocks.1.attn.hook_k",
                 "blocks.1.attn.hook_v", "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z",
                 "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post",
                 "blocks.0.hook_mlp_out", "blocks.1.hook_resid_post", "ln_final.hook_normalized", "ln_final.hook_scale"]:
        assert name in c, name
    assert c["blocks.1.attn.hook_q"].shape == (3, 16, 2, 8)
    assert c["blocks.0.attn.hook_pattern"].shape == (3, 2, 16, 16)
    assert c["blocks.0.mlp.hook_pre"].shape == (3, 16, 64)


def test_layernorm_scale_hook_path_matches_fast_path():
    model = model_for(attn_only=False)
    x = tokens()
    logits, c = run_with_cache(model, x, ["ln_final.hook_scale"])
    assert torch.allclose(logits, model(x), atol=1e-5)
    assert c["ln_final.hook_scale"].shape == (3, 16, 1)


def test_init_depends_on_the_seed_alone():
    a, b = model_for(), model_for()
    torch.manual_seed(999)
    c = model_for()
    for (n, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r), n
    cond, _ = resolve(tiny())
    other = Transformer(cond.architecture, seed=8)
    assert not torch.equal(other.embed.weight, a.embed.weight)


def test_hooks_can_change_activations_and_always_clean_up():
    model = model_for()
    x = tokens()
    clean = model(x)
    zeroed = run_with_hooks(model, x, [("blocks.1.hook_attn_out", lambda t, hook: torch.zeros_like(t))])
    assert not torch.allclose(clean, zeroed)
    with pytest.raises(RuntimeError):
        with hooks(model, [(lambda n: n.endswith("hook_pattern"), lambda t, hook: None)]):
            raise RuntimeError("boom")
    assert all(not hp.fns for hp in model.hook_points.values())
    assert torch.equal(model(x), clean)


def test_unknown_hook_name_lists_nearest():
    model = model_for()
    with pytest.raises(SeedbedError) as err:
        run_with_cache(model, tokens(), ["blocks.0.attn.hook_patern"])
    assert "blocks.0.attn.hook_pattern" in str(err.value) and "\n" not in str(err.value)
    assert all(not hp.fns for hp in model.hook_points.values())


def test_too_long_input_is_a_clear_error():
    with pytest.raises(SeedbedError, match="n_ctx is 16"):
        model_for()(tokens(t=17))


def test_a_replaced_layernorm_scale_is_used():
    model = model_for(attn_only=False)
    x = tokens()
    _, c = run_with_cache(model, x, "ln_final.hook_scale")
    doubled = run_with_hooks(model, x, [("ln_final.hook_scale", lambda s, hook: s * 2)])
    resid = run_with_cache(model, x, "blocks.1.hook_resid_post")[1]["blocks.1.hook_resid_post"]
    centred = resid - resid.mean(-1, keepdim=True)
    by_hand = model.unembed(centred / (2 * c["ln_final.hook_scale"]) * model.ln_final.weight + model.ln_final.bias)
    assert torch.allclose(doubled, by_hand, atol=1e-5)


def test_cache_keeps_only_what_is_asked():
    model = model_for(attn_only=False)
    x = tokens()
    _, by_list = run_with_cache(model, x, ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z"])
    _, by_predicate = run_with_cache(model, x, lambda n: n.endswith("hook_pattern"))
    assert set(by_list) == {"blocks.0.hook_resid_pre", "blocks.1.attn.hook_z"}
    assert set(by_predicate) == {"blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"}
    _, everything = run_with_cache(model, x)
    assert set(everything) == set(model.hook_points)


def test_hooks_clean_up_when_a_hook_fails_mid_forward():
    model = model_for()

    def broken(t, hook):
        raise ValueError("a bad hook")

    with pytest.raises(ValueError):
        run_with_hooks(model, tokens(), [("blocks.1.attn.hook_z", broken), ("hook_embed", lambda t, hook: t)])
    assert all(not hp.fns for hp in model.hook_points.values())
