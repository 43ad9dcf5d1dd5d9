import pytest
import torch

from seedbed.errors import SeedbedError
from seedbed.hooks import run_with_cache
from seedbed.model import Transformer
from seedbed.read.attribution import (
    apply_ln_to_stack,
    attribution_cache,
    component_logits,
    decompose_resid,
    logit_attribution,
    logit_lens,
)
from seedbed.soil import resolve

from conftest import tiny

ARCHS = [
    {"attn_only": True},
    {"attn_only": False},
    {"attn_only": True, "layernorm": False},
    {"attn_only": False, "layernorm": False, "act": "relu"},
    {"attn_only": False, "tied_embeddings": True, "n_layers": 3},
]


def model_for(**arch) -> Transformer:
    """A tiny model with every weight, bias and LN gain randomised (biases start at 0, and must be tested)."""
    cond, _ = resolve(tiny(architecture=arch))
    model = Transformer(cond.architecture, seed=7)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def tokens(n=4, t=16, v=16):
    return torch.randint(0, v, (n, t), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
def test_components_sum_to_the_residual_stream(arch):
    model = model_for(**arch)
    _, cache = run_with_cache(model, tokens())
    n = model.cfg.n_layers
    for layer in range(n + 1):
        c = decompose_resid(model, cache, layer)
        want = cache[f"blocks.{layer}.hook_resid_pre"] if layer < n else cache[f"blocks.{n - 1}.hook_resid_post"]
        assert torch.allclose(c.total(), want, atol=1e-5), layer
    by_layer = decompose_resid(model, cache, by="layer")
    assert torch.allclose(by_layer.total(), cache[f"blocks.{n - 1}.hook_resid_post"], atol=1e-5)
    assert by_layer.labels[:3] == ["embed", "pos_embed", "L0 attn"]


def test_labels_and_head_grid():
    model = model_for(attn_only=False)
    _, cache = attribution_cache(model, tokens())
    c = decompose_resid(model, cache, pos=-1)
    assert c.labels == ["embed", "pos_embed", "L0H0", "L0H1", "L0 attn bias", "MLP0", "L1H0", "L1H1", "L1 attn bias", "MLP1"]
    assert c.stack.shape == (10, 4, 16)  # one position: its axis is gone
    assert c.heads().shape == (2, 2, 4, 16)
    assert torch.equal(c.heads()[1, 0], c["L1H0"])
    with pytest.raises(SeedbedError, match="no component labelled 'L9H9'"):
        c["L9H9"]


@pytest.mark.parametrize("arch", ARCHS)
def test_component_logits_sum_to_the_model_logits(arch):
    model = model_for(**arch)
    logits, cache = attribution_cache(model, tokens())
    c = component_logits(model, cache)
    assert (c.labels[-1] == "ln_final bias") == model.cfg.layernorm
    assert torch.allclose(c.total(), logits, atol=1e-4)
    assert torch.allclose(model(tokens()), logits, atol=1e-5)  # the explicit LayerNorm changed nothing
    one = component_logits(model, cache, pos=3)
    assert torch.allclose(one.total(), logits[:, 3], atol=1e-4)


def test_ln_is_frozen_at_the_cached_scale():
    """Centre, divide by this run's ln_final scale, multiply by the weight: linear in the components."""
    model = model_for(attn_only=True)
    _, cache = attribution_cache(model, tokens())
    c = decompose_resid(model, cache)
    normed = apply_ln_to_stack(model, cache, c)
    i = c.labels.index("L1H0")
    x = c.stack[i]
    want = (x - x.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"] * model.ln_final.weight
    assert torch.allclose(normed.stack[i], want)
    assert torch.allclose(normed["ln_final bias"], model.ln_final.bias.detach().expand_as(x))


@pytest.mark.parametrize("arch", ARCHS[:3])
def test_logit_attribution_adds_up_to_the_logit_difference(arch):
    model = model_for(**arch)
    x = tokens()
    logits, cache = attribution_cache(model, x)
    answer, wrong = x[:, -1], x[:, 0]
    dla = logit_attribution(model, cache, answer, wrong)  # last position by default
    last = logits[:, -1]
    want = last.gather(1, answer[:, None])[:, 0] - last.gather(1, wrong[:, None])[:, 0]
    assert dla.stack.shape == (len(dla.labels), 4)
    assert torch.allclose(dla.total(), want, atol=1e-4)
    assert dla.heads().shape == (model.cfg.n_layers, model.cfg.n_heads, 4)
    single = logit_attribution(model, cache, 5, pos=2, by="layer")
    assert torch.allclose(single.total(), logits[:, 2, 5], atol=1e-4)


def test_a_cache_without_what_is_needed_says_how_to_make_one():
    model = model_for(attn_only=True)
    _, cache = run_with_cache(model, tokens(), ["hook_embed", "hook_pos_embed"])
    with pytest.raises(SeedbedError, match="attribution_cache"):
        component_logits(model, cache)
    with pytest.raises(SeedbedError, match="out of range"):
        decompose_resid(model, cache, layer=5)


@pytest.mark.parametrize("arch", ARCHS[:3])
def test_logit_lens_ends_at_the_model_output(arch):
    model = model_for(**arch)
    x = tokens()
    lens = logit_lens(model, x)
    n = model.cfg.n_layers
    assert lens.logits.shape == (n + 1, 4, 16, 16)
    assert lens.labels == [f"blocks.{l}.hook_resid_pre" for l in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    assert torch.allclose(lens.logits[-1], model(x), atol=1e-5)
    final = torch.nn.functional.cross_entropy(model(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    assert lens.loss[-1].item() == pytest.approx(final.item(), abs=1e-5)
    # the first entry reads the bare embeddings, through the real LayerNorm (its own scale)
    _, c = run_with_cache(model, x, ["blocks.0.hook_resid_pre"])
    assert torch.allclose(lens.logits[0], model.unembed(model.ln_final(c["blocks.0.hook_resid_pre"])), atol=1e-6)
    assert lens.accuracy.shape == (n + 1,) and ((lens.accuracy >= 0) & (lens.accuracy <= 1)).all()


def test_logit_lens_with_targets_and_a_mask():
    model = model_for(attn_only=True)
    x = tokens()
    targets = torch.zeros_like(x)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, 5] = True
    lens = logit_lens(model, x, targets, mask)
    want = torch.nn.functional.cross_entropy(model(x)[:, 5], targets[:, 5])
    assert lens.loss[-1].item() == pytest.approx(want.item(), abs=1e-5)
    with pytest.raises(SeedbedError, match="targets have shape"):
        logit_lens(model, x, targets[:, 1:])


def test_training_mode_is_restored():
    model = model_for(attn_only=True).train()
    attribution_cache(model, tokens())
    logit_lens(model, tokens())
    assert model.training
