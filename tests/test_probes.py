import itertools

import pytest
import torch

from seedbed.errors import SeedbedError
from seedbed.model import Transformer
from seedbed.read.probes import auroc, probe_acts, probe_hook, train_probe
from seedbed.soil import resolve

from conftest import tiny


def separable(n=400, d=8, seed=0, margin=0.5):
    """Gaussian points with the band |w·x| < margin removed: linearly separable by w."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * n, d, generator=g)
    w = torch.randn(d, generator=g)
    s = x @ w / w.norm()
    keep = s.abs() > margin
    return x[keep][:n], (s[keep][:n] > 0).long()


def brute_auroc(scores, positive):
    """The definition: over all (positive, negative) pairs, 1 if the positive scores higher, 1/2 if tied."""
    pos = [s for s, p in zip(scores.tolist(), positive.tolist()) if p]
    neg = [s for s, p in zip(scores.tolist(), positive.tolist()) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_by_hand_with_ties():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.1])
    positive = torch.tensor([0, 0, 1, 1, 1, 0, 1])
    # pairs: positives {0.35, 0.8, 0.4, 0.1} vs negatives {0.1, 0.4, 0.4}
    # 0.35: 1 + 0 + 0 = 1; 0.8: 3; 0.4: 1 + .5 + .5 = 2; 0.1: .5 → 6.5 / 12
    assert auroc(scores, positive) == pytest.approx(6.5 / 12)
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        s = torch.randint(0, 5, (30,), generator=g).float()  # many ties
        y = torch.randint(0, 2, (30,), generator=g)
        assert auroc(s, y) == pytest.approx(brute_auroc(s, y))
    assert auroc(torch.ones(4), torch.tensor([0, 1, 0, 1])) == 0.5
    assert auroc(torch.arange(4.0), torch.tensor([0, 0, 1, 1])) == 1.0
    assert auroc(torch.arange(4.0), torch.ones(4)) != auroc(torch.arange(4.0), torch.ones(4))  # NaN: one class


def test_a_separable_set_is_read_perfectly():
    x, y = separable()
    r = train_probe(x, y)
    assert r.accuracy == 1.0 and r.auroc == 1.0 and r.train_accuracy == 1.0
    assert (r.n_train, r.n_test) == (300, 100)
    assert r.weights.shape == (8,) and r.bias.shape == ()
    assert torch.equal(r.predict(x), y)  # the weights act on raw activations


def test_random_labels_are_read_at_chance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 8, generator=g)
    y = torch.randint(0, 2, (600,), generator=g)
    r = train_probe(x, y)
    assert abs(r.accuracy - 0.5) < 0.12 and abs(r.auroc - 0.5) < 0.12


def test_multi_class_and_label_values():
    g = torch.Generator().manual_seed(2)
    centres = 4 * torch.eye(5)[:3]
    y = torch.randint(0, 3, (300,), generator=g)
    x = centres[y] + 0.3 * torch.randn(300, 5, generator=g)
    r = train_probe(x, y * 10 + 7)  # label values need not be 0..n-1
    assert r.accuracy == 1.0 and r.auroc == 1.0
    assert r.classes.tolist() == [7, 17, 27]
    assert r.weights.shape == (3, 5) and r.bias.shape == (3,)
    assert torch.equal(r.predict(x), y * 10 + 7)


def test_the_split_is_stratified():
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1] * 20 + [0] * 80)
    r = train_probe(x, y, holdout=0.25)
    assert (r.n_train, r.n_test) == (75, 25)  # 5 of the 20 positives, 20 of the 80 negatives held out


def test_deterministic_bit_for_bit():
    x, y = separable(seed=4, margin=0.0)
    a, b = train_probe(x, y, seed=3), train_probe(x, y, seed=3)
    assert torch.equal(a.weights, b.weights) and torch.equal(a.bias, b.bias)
    assert (a.accuracy, a.auroc, a.train_accuracy) == (b.accuracy, b.auroc, b.train_accuracy)
    c = train_probe(x, y, seed=4)
    assert not torch.equal(a.weights, c.weights)  # another seed, another split


def test_bad_inputs_are_one_line_errors():
    x = torch.randn(10, 3)
    with pytest.raises(SeedbedError, match="one label per row"):
        train_probe(x, torch.zeros(9, dtype=torch.long))
    with pytest.raises(SeedbedError, match="at least two classes"):
        train_probe(x, torch.zeros(10, dtype=torch.long))
    with pytest.raises(SeedbedError, match="holdout"):
        train_probe(x, torch.arange(10) % 2, holdout=1.0)


def model():
    cond, _ = resolve(tiny(architecture={"d_model": 32}))
    return Transformer(cond.architecture, seed=0).eval()


def test_probe_a_hook_for_the_current_token():
    """Is 'the current token is odd' readable from the embedding? Yes: each token has its own vector."""
    m = model()
    tokens = torch.randint(0, 16, (64, 16), generator=torch.Generator().manual_seed(0))
    r = probe_hook(m, tokens, tokens % 2, "hook_embed")
    assert r.accuracy > 0.95 and r.n_train + r.n_test == 64 * 16
    last = probe_hook(m, tokens, tokens[:, -1] % 2, "hook_embed", positions=-1)
    assert last.n_train + last.n_test == 64
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 3:6] = True
    masked = probe_hook(m, tokens, tokens % 2, "hook_embed", positions=mask)
    assert masked.n_train + masked.n_test == 64 * 3
    each = probe_acts(m, tokens, "blocks.1.attn.hook_z", positions=torch.arange(64) % 16)
    assert each.shape == (64, 32)  # heads · d_head features


def test_an_unknown_hook_lists_the_nearest():
    m = model()
    tokens = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(SeedbedError, match="no hook point named 'blocks.0.hook_resid'.*blocks.0.hook_resid_pre"):
        probe_hook(m, tokens, torch.tensor([0, 1]), "blocks.0.hook_resid", positions=-1)
    with pytest.raises(SeedbedError, match="not per position"):
        probe_acts(m, tokens, "blocks.0.attn.hook_pattern")
