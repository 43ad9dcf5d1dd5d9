"""Ablation, activation patching and attribution patching (seedbed.read.ablate, seedbed.read.patching)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seedbed.conditions import Architecture
from seedbed.errors import SeedbedError
from seedbed.hooks import hooks, run_with_cache, run_with_hooks
from seedbed.model import Transformer
from seedbed.read.ablate import MLP, Head, Neuron, ablate, ablated, loss_after_ablation
from seedbed.read.patching import SITES, activation_patching, attribution_patching, run_suffix

from conftest import tiny

VOCAB = 40
SHAPES = {
    "mlp": {},
    "attn-only": {"attn_only": True},
    "no-layernorm": {"layernorm": False},
    "relu-tied": {"act": "relu", "tied_embeddings": True},
}


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: a second thread only waits, and on a busy machine it can wait
    for seconds per forward (OpenMP threads spinning on a shared core). One is faster, always."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def model_of(scale: float = 8.0, **arch) -> Transformer:
    """A random model whose weights are large enough that patches change the metric a lot."""
    cfg = Architecture(**{"n_layers": 3, "d_model": 32, "n_heads": 4, "n_ctx": 16, "d_vocab": VOCAB, **arch})
    model = Transformer(cfg, seed=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(scale)
    return model


def pair(batch: int = 3, pos: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(VOCAB, (batch, pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2:6] = torch.randint(VOCAB, (batch, 4), generator=g)
    return clean, corrupted


def logprob_metric(logits: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of token 3 over the last four positions: non-linear in the logits."""
    return logits[:, -4:].log_softmax(-1)[..., 3].mean()


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """Linear in the logits."""
    return (logits[:, -1, 3] - logits[:, -1, 7]).mean()


# ── ablation ─────────────────────────────────────────────────────────────────
def test_zero_ablating_a_head_is_zeroing_its_z():
    model = model_of()
    tokens, _ = pair()

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    with torch.no_grad():
        manual = run_with_hooks(model, tokens, [("blocks.1.attn.hook_z", zero_head)])
    assert torch.equal(ablate(model, tokens, [Head(1, 2)]), manual)
    # ... which takes W_O[head] @ z out of the attention output, and nothing else
    _, before = run_with_cache(model, tokens, ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"])
    with ablated(model, [Head(1, 2)]):
        _, after = run_with_cache(model, tokens, ["blocks.1.hook_attn_out"])
    W_O = model.blocks[1].attn.W_O
    removed = torch.einsum("bpd,dm->bpm", before["blocks.1.attn.hook_z"][:, :, 2], W_O[2])
    assert torch.allclose(before["blocks.1.hook_attn_out"] - after["blocks.1.hook_attn_out"], removed, atol=1e-5)


def test_zero_ablating_an_mlp_and_a_neuron():
    model = model_of()
    tokens, _ = pair()
    names = ["blocks.0.hook_mlp_out", "blocks.2.mlp.hook_post"]
    _, before = run_with_cache(model, tokens, names)
    with ablated(model, [MLP(0), Neuron(2, 17)]):
        _, after = run_with_cache(model, tokens, names)
    assert torch.equal(after["blocks.0.hook_mlp_out"], torch.zeros_like(before["blocks.0.hook_mlp_out"]))
    post = after["blocks.2.mlp.hook_post"]
    assert torch.equal(post[..., 17], torch.zeros_like(post[..., 17]))
    assert not torch.equal(post, before["blocks.2.mlp.hook_post"])  # MLP(0) changed what layer 2 sees


def test_mean_ablation_uses_the_references_mean_at_each_position():
    model = model_of()
    tokens, _ = pair(batch=2, pos=8)
    reference = torch.randint(VOCAB, (6, 12), generator=torch.Generator().manual_seed(5))
    _, ref = run_with_cache(model, reference, ["blocks.1.attn.hook_z", "blocks.2.mlp.hook_post"])
    with ablated(model, [Head(1, 3), Neuron(2, 5)], "mean", reference):
        _, got = run_with_cache(model, tokens, ["blocks.1.attn.hook_z", "blocks.2.mlp.hook_post"])
    want_z = ref["blocks.1.attn.hook_z"][:, :8, 3].mean(0)  # per position, first 8 of the reference's 12
    assert torch.allclose(got["blocks.1.attn.hook_z"][:, :, 3], want_z.expand(2, -1, -1))
    assert torch.allclose(got["blocks.2.mlp.hook_post"][..., 5], ref["blocks.2.mlp.hook_post"][:, :8, 5].mean(0).expand(2, -1))
    with pytest.raises(SeedbedError, match="reference has 12 positions but the input has 14"), ablated(model, [Head(1, 3)], "mean", reference):
        model(torch.zeros(1, 14, dtype=torch.long))


def test_resample_ablation_takes_other_rows_activations():
    model = model_of()
    tokens = torch.randint(VOCAB, (5, 8), generator=torch.Generator().manual_seed(1))
    _, own = run_with_cache(model, tokens, ["blocks.0.attn.hook_z"])
    z = own["blocks.0.attn.hook_z"][:, :, 1]
    with ablated(model, [Head(0, 1)], "resample", tokens, seed=3):
        _, got = run_with_cache(model, tokens, ["blocks.0.attn.hook_z"])
    resampled = got["blocks.0.attn.hook_z"][:, :, 1]
    sources = [next(j for j in range(5) if torch.equal(resampled[i], z[j])) for i in range(5)]
    assert sorted(sources) == list(range(5)) and all(s != i for i, s in enumerate(sources))  # a permutation, no row keeps its own
    # deterministic given the seed; another seed, another order; seed=None pairs row i with reference row i
    assert torch.equal(ablate(model, tokens, [Head(0, 1)], "resample", seed=3), ablate(model, tokens, [Head(0, 1)], "resample", seed=3))
    assert not torch.equal(ablate(model, tokens, [Head(0, 1)], "resample", seed=3), ablate(model, tokens, [Head(0, 1)], "resample", seed=4))
    other = torch.randint(VOCAB, (5, 8), generator=torch.Generator().manual_seed(2))
    _, ref = run_with_cache(model, other, ["blocks.0.attn.hook_z"])
    with ablated(model, [Head(0, 1)], "resample", other, seed=None):
        _, got = run_with_cache(model, tokens, ["blocks.0.attn.hook_z"])
    assert torch.equal(got["blocks.0.attn.hook_z"][:, :, 1], ref["blocks.0.attn.hook_z"][:, :, 1])


def test_loss_after_ablation():
    model = model_of()
    tokens, _ = pair()
    with torch.no_grad():
        plain = F.cross_entropy(model(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    assert torch.allclose(loss_after_ablation(model, tokens, []), plain)
    assert loss_after_ablation(model, tokens, [Head(0, 0), Head(2, 1)]) != plain
    assert torch.equal(loss_after_ablation(model, tokens, [MLP(1)], metric=logit_diff), logit_diff(ablate(model, tokens, [MLP(1)])))


@pytest.mark.parametrize(
    "targets, method, message",
    [
        ([Head(3, 0)], "zero", r"Head\(layer=3, head=0\) is out of range: the model has layers 0..2"),
        ([Head(0, 4)], "zero", "layer 0 has heads 0..3"),
        ([Neuron(0, 128)], "zero", "neurons 0..127"),
        ([Head(0, 0)], "average", "unknown ablation method 'average'"),
        ([Head(0, 0)], "mean", "'mean' ablation needs a reference batch"),
    ],
)
def test_ablation_errors(targets, method, message):
    with pytest.raises(SeedbedError, match=message):
        ablate(model_of(), pair()[0], targets, method)


def test_resample_needs_two_rows():
    with pytest.raises(SeedbedError, match="at least 2 rows"):
        ablate(model_of(), pair(batch=1)[0], [Head(0, 0)], "resample")


def test_no_mlp_to_ablate_in_an_attention_only_model():
    with pytest.raises(SeedbedError, match="attention-only"):
        ablate(model_of(attn_only=True), pair()[0], [MLP(0)])


# ── activation patching ──────────────────────────────────────────────────────
@pytest.mark.parametrize("shape", SHAPES)
def test_run_suffix_from_the_start_is_the_forward(shape):
    model = model_of(**SHAPES[shape])
    tokens, _ = pair()
    _, cache = run_with_cache(model, tokens, ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"])
    with torch.no_grad():
        logits = model(tokens)
        assert torch.allclose(run_suffix(model, 0, cache["blocks.0.hook_resid_pre"]), logits, atol=1e-5)
        assert torch.allclose(run_suffix(model, 1, cache["blocks.1.hook_resid_pre"]), logits, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_batched_patching_equals_one_patch_per_forward(shape):
    model = model_of(**SHAPES[shape])
    clean, corrupted = pair()
    for site in SITES:
        if site == "mlp_out" and model.cfg.attn_only:
            continue
        for per_position in (True, False):
            fast = activation_patching(model, clean, corrupted, logprob_metric, site, per_position=per_position)
            slow = activation_patching(model, clean, corrupted, logprob_metric, site, per_position=per_position, batched=False)
            assert fast.shape == slow.shape
            assert torch.allclose(fast, slow, atol=1e-5, rtol=0), (site, per_position, (fast - slow).abs().max())
            if per_position or site not in ("resid_pre", "resid_post"):  # (those two all recover the clean metric)
                assert fast.max() - fast.min() > 1e-3, (site, per_position)  # patches move the metric, far beyond the tolerance


@pytest.mark.parametrize("shape", ["mlp", "attn-only"])
@pytest.mark.parametrize("read", [[-1], [4, 7], [0]])
def test_a_metric_reading_some_positions(shape, read):
    """It gets only those positions' logits; the batched path computes only what they depend on."""
    model = model_of(**SHAPES[shape])
    clean, corrupted = pair(pos=10)
    seen = []

    def metric(logits):
        seen.append(logits.shape)
        return logits.log_softmax(-1)[..., 3].mean()

    for site in ("z", "resid_pre", "attn_out", "resid_post"):
        for per_position in (True, False):
            kw = {"per_position": per_position, "metric_positions": read}
            fast = activation_patching(model, clean, corrupted, metric, site, **kw)
            slow = activation_patching(model, clean, corrupted, metric, site, batched=False, **kw)
            assert torch.allclose(fast, slow, atol=1e-5, rtol=0), (site, per_position, (fast - slow).abs().max())
    assert set(seen) == {(3, len(read), VOCAB)}
    with pytest.raises(SeedbedError, match=r"metric_positions \[10\] must be positions of the 10-token input"):
        activation_patching(model, clean, corrupted, metric, metric_positions=[10])


def test_the_positions_a_metric_reads_are_found_by_asking_it():
    from seedbed.read.patching import _positions_read

    logits = torch.randn(2, 10, VOCAB)
    assert _positions_read(logprob_metric, logits).tolist() == [6, 7, 8, 9]
    assert _positions_read(logit_diff, logits).tolist() == [9]
    assert _positions_read(lambda x: x.mean(), logits) is None  # reads everything
    accuracy = lambda x: (x[:, -1].argmax(-1) == 3).float().mean()  # noqa: E731 - no gradient: not narrowed
    assert _positions_read(accuracy, logits) is None
    # the gradient is zero at position 2 (relu below zero) but the metric does read it: the NaN check catches it
    sneaky = lambda x: x[:, -1, 3].mean() + torch.relu(x[:, 2, 0] - 1e9).mean()  # noqa: E731
    assert _positions_read(sneaky, logits) is None


@pytest.mark.parametrize("metric", [logprob_metric, logit_diff, lambda x: (x[:, 5:7].argmax(-1) == 3).float().mean()])
def test_narrowed_sweeps_equal_one_patch_per_forward(metric):
    model = model_of()
    clean, corrupted = pair()
    for site in ("z", "resid_pre", "mlp_out"):
        fast = activation_patching(model, clean, corrupted, metric, site)
        slow = activation_patching(model, clean, corrupted, metric, site, batched=False)
        assert torch.allclose(fast, slow, atol=1e-5, rtol=0), (site, (fast - slow).abs().max())


def test_result_shapes_and_axes():
    model = model_of()
    clean, corrupted = pair(pos=10)
    z = activation_patching(model, clean, corrupted, logprob_metric, "z")
    assert z.shape == (3, 4, 10)  # [layer, head, pos]
    assert activation_patching(model, clean, corrupted, logprob_metric, "z", per_position=False).shape == (3, 4)
    assert activation_patching(model, clean, corrupted, logprob_metric, "attn_out").shape == (3, 10)  # [layer, pos]
    assert activation_patching(model, clean, corrupted, logprob_metric, "mlp_out", per_position=False).shape == (3,)
    # z[1, 2, 7] is "head 2 of layer 1 at position 7": the same number a single hooked forward gives
    with torch.no_grad():
        def patch(x, hook):
            x = x.clone()
            x[:, 7, 2] = cache["blocks.1.attn.hook_z"][:, 7, 2]
            return x

        _, cache = run_with_cache(model, clean, ["blocks.1.attn.hook_z"])
        one = logprob_metric(run_with_hooks(model, corrupted, [("blocks.1.attn.hook_z", patch)]))
    assert torch.allclose(z[1, 2, 7], one, atol=1e-5)


def test_patching_with_clean_equal_to_corrupted_changes_nothing():
    model = model_of()
    tokens, _ = pair()
    with torch.no_grad():
        baseline = logprob_metric(model(tokens))
    for site in ("resid_pre", "z", "mlp_out"):
        out = activation_patching(model, tokens, tokens, logprob_metric, site)
        assert torch.allclose(out, baseline.expand_as(out), atol=1e-5)


def test_patching_the_whole_residual_recovers_the_clean_metric():
    model = model_of()
    clean, corrupted = pair()
    with torch.no_grad():
        clean_metric, corrupt_metric = logprob_metric(model(clean)), logprob_metric(model(corrupted))
    assert abs(clean_metric - corrupt_metric) > 0.01  # far beyond the tolerance below
    post = activation_patching(model, clean, corrupted, logprob_metric, "resid_post", per_position=False)
    pre = activation_patching(model, clean, corrupted, logprob_metric, "resid_pre", per_position=False)
    assert torch.allclose(post[-1], clean_metric, atol=1e-5)  # the last layer's resid_post is all the logits see
    assert torch.allclose(pre, clean_metric.expand(3), atol=1e-5)  # every layer's residual carries everything
    # positions before the corruption (0, 1) carry no difference
    by_pos = activation_patching(model, clean, corrupted, logprob_metric, "resid_pre")
    assert torch.allclose(by_pos[:, :2], corrupt_metric.expand(3, 2), atol=1e-5)


def test_a_tiny_memory_budget_gives_the_same_results():
    model = model_of()
    clean, corrupted = pair()
    for site in ("z", "resid_pre", "mlp_out"):
        for read in (None, [5, -1]):
            kw = {"metric_positions": read}
            one_copy_at_a_time = activation_patching(model, clean, corrupted, logprob_metric, site, max_mib=1e-9, **kw)
            default = activation_patching(model, clean, corrupted, logprob_metric, site, **kw)
            assert torch.allclose(one_copy_at_a_time, default, atol=1e-5, rtol=0)


def test_patching_inside_an_ablation_applies_the_ablation():
    model = model_of()
    clean, corrupted = pair()
    plain = activation_patching(model, clean, corrupted, logprob_metric, "z")
    with ablated(model, [Head(1, 0)]):
        inside = activation_patching(model, clean, corrupted, logprob_metric, "z")
        reference = activation_patching(model, clean, corrupted, logprob_metric, "z", batched=False)
    assert torch.equal(inside, reference)
    assert not torch.allclose(inside, plain)


def test_patching_errors():
    model = model_of()
    clean, _ = pair(batch=4, pos=10)
    with pytest.raises(SeedbedError) as e:
        activation_patching(model, clean, clean[:, :8], logprob_metric)
    assert str(e.value) == "clean tokens are [4, 10] but corrupted are [4, 8]: patching needs inputs of the same shape"
    with pytest.raises(SeedbedError, match="unknown patching site 'resid'"):
        activation_patching(model, clean, clean, logprob_metric, "resid")  # type: ignore[arg-type]
    with pytest.raises(SeedbedError, match="attention-only"):
        activation_patching(model_of(attn_only=True), clean, clean, logprob_metric, "mlp_out")
    with pytest.raises(SeedbedError, match=r"the metric returned shape \[4\]"):
        activation_patching(model, clean, clean, lambda logits: logits[:, -1, 0])
    with pytest.raises(SeedbedError, match="clean tokens are"):
        attribution_patching(model, clean, clean[:2], logprob_metric)


# ── attribution patching ────────────────────────────────────────────────────
def test_attribution_is_exact_where_the_metric_is_linear_in_the_activation():
    """No LayerNorm, no MLP: logits are linear in the last layer's z and attn_out, and so is a logit difference."""
    model = model_of(scale=30.0, attn_only=True, layernorm=False)
    clean, corrupted = pair()
    with torch.no_grad():
        baseline = logit_diff(model(corrupted))
    attribution = attribution_patching(model, clean, corrupted, logit_diff)
    for site in ("z", "attn_out", "resid_post"):
        exact = activation_patching(model, clean, corrupted, logit_diff, site) - baseline
        assert exact[-1].abs().max() > 0.1
        assert torch.allclose(attribution[site][-1], exact[-1], atol=1e-4, rtol=1e-4), site
        assert not torch.allclose(attribution[site][0], exact[0], atol=1e-3)  # earlier layers: only an approximation


def test_attribution_takes_two_forwards_and_one_backward(monkeypatch):
    model = model_of()
    clean, corrupted = pair()
    forwards, backwards = [], []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backwards.append(1) or grad(*a, **k))
    monkeypatch.setattr(torch.Tensor, "backward", lambda *a, **k: backwards.append(1))
    with hooks(model, [("hook_embed", lambda x, hook: forwards.append(1))]):
        out = attribution_patching(model, clean, corrupted, logprob_metric)
    assert len(forwards) == 2 and len(backwards) == 1
    expected = {"resid_pre": (3, 10), "attn_out": (3, 10), "mlp_out": (3, 10), "resid_post": (3, 10), "z": (3, 4, 10)}
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert all(p.grad is None for p in model.parameters())  # the weights' .grad is left alone


def test_attribution_with_frozen_weights():
    model = model_of()
    clean, corrupted = pair()
    want = attribution_patching(model, clean, corrupted, logprob_metric, ["z"])["z"]
    for p in model.parameters():
        p.requires_grad_(False)
    assert torch.allclose(attribution_patching(model, clean, corrupted, logprob_metric, ["z"])["z"], want, atol=1e-6)


def induction_pair(n_rows: int = 8, block: int = 8, vocab: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS, block, block (clean) vs BOS, other, block (corrupted): only the clean one can be copied from."""
    g = torch.Generator().manual_seed(0)
    repeated, other = torch.randint(1, vocab, (2, n_rows, block), generator=g)
    bos = torch.zeros(n_rows, 1, dtype=torch.long)
    return torch.cat([bos, repeated, repeated], 1), torch.cat([bos, other, repeated], 1)


@pytest.mark.slow
def test_attribution_agrees_with_patching_on_a_grown_induction_model(tmp_path):
    """Repeated-blocks grows induction heads; attribution must rank heads × positions as exact patching does."""
    from seedbed.grow import grow
    from seedbed.read import load

    conditions = tiny(
        soil={"kind": "repeated-blocks", "vocab_size": 32, "block_min": 3, "block_max": 8, "prefix_max": 3},
        architecture={"n_layers": 2, "d_model": 32, "n_heads": 2, "n_ctx": 20, "attn_only": True},
        optimizer={"lr": 2e-2},
        schedule={"steps": 300, "batch_size": 32, "warmup_steps": 10, "eval_every": 300, "eval_batches": 1},
        checkpoints={"log_until": 0, "every": 10**6},
    )
    grow(conditions, runs_dir=tmp_path, name="induction", progress=False)
    model = load(tmp_path / "induction").model
    clean, corrupted = induction_pair()
    targets = clean[:, 1:]

    def second_copy_logprob(logits):
        return logits[:, :-1].log_softmax(-1).gather(-1, targets[..., None])[:, 8:].mean()

    with torch.no_grad():
        clean_metric, corrupt_metric = second_copy_logprob(model(clean)), second_copy_logprob(model(corrupted))
    assert clean_metric - corrupt_metric > 2.0  # the model copies: it needs the first copy
    exact = activation_patching(model, clean, corrupted, second_copy_logprob, "z") - corrupt_metric
    attribution = attribution_patching(model, clean, corrupted, second_copy_logprob, ["z"])["z"]
    r = torch.corrcoef(torch.stack([exact.flatten(), attribution.flatten()]))[0, 1]
    assert r > 0.9, f"correlation {r:.3f} over {exact.numel()} heads × positions"
    # (0.98 for seeds 0, 1 and 2.) The head and position that matter most is among attribution's top three.
    assert exact.flatten().argmax() in attribution.flatten().topk(3).indices
