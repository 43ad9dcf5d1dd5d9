"""Linear probes: is a property linearly readable from the activations at a hook point?

A probe is a logistic regression (softmax regression for more than two classes)
trained on cached activations and judged on examples it never saw. High held-out
accuracy says the information is *there, linearly*; it does not say the model uses
it. Everything is deterministic given the seed: the split is a seeded, stratified
permutation and training is full-batch L-BFGS in float64, so the same call gives
the same bits.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from seedbed.errors import SeedbedError
from seedbed.hooks import run_with_cache
from seedbed.model import Transformer, device_of, evaluating


@dataclass
class ProbeResult:
    """A trained probe and how well it did.

    `accuracy` and `auroc` are on the held-out examples (AUROC: binary, or the macro
    average of one-vs-rest AUROCs over classes); `train_accuracy` on the rest. The
    probe acts on raw activations: binary `weights` [d] and `bias` [] give the logit of
    `classes[1]`; multi-class `weights` [n_classes, d] and `bias` [n_classes] give one
    logit per entry of `classes` (the label values, sorted).
    """

    accuracy: float
    auroc: float
    train_accuracy: float
    weights: Tensor
    bias: Tensor
    classes: Tensor
    n_train: int
    n_test: int

    def logits(self, acts: Tensor) -> Tensor:
        W = self.weights if self.weights.dim() == 1 else self.weights.T
        return acts.to(self.weights) @ W + self.bias

    def predict(self, acts: Tensor) -> Tensor:
        """The predicted label value for each row of `acts` [N, d]."""
        z = self.logits(acts)
        index = (z > 0).long() if z.dim() == 1 else z.argmax(-1)
        return self.classes[index]


# ── AUROC ────────────────────────────────────────────────────────────────────
def _ranks(x: Tensor) -> Tensor:
    """1-based ranks of x, ties sharing the average of the ranks they span."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # rank of the last member of each tie group
    return (last - (counts.double() - 1) / 2)[inverse]


def auroc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative).

    Ties count one half (the Mann–Whitney U statistic from average ranks). NaN if
    `positive` holds only one class.
    """
    positive = positive.bool().flatten()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _ranks(scores.flatten().double())[positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# ── training ─────────────────────────────────────────────────────────────────
def _split(y: Tensor, holdout: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Train and test indices: each class shuffled and cut at the same fraction (stratified)."""
    train, test = [], []
    for c in range(int(y.max()) + 1):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = min(max(round(holdout * len(idx)), 1), len(idx) - 1)  # both sides see every class
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run on one thread: a probe's tensors are small, and splitting each tiny op across
    threads costs far more than it saves (badly so on a busy machine). It also keeps
    the result's bits independent of the machine's thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(X: Tensor, y: Tensor, n_classes: int, l2: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """Minimise mean cross-entropy + l2/2·||W||² (bias not penalised) with full-batch L-BFGS."""
    n_out = 1 if n_classes == 2 else n_classes
    W = torch.zeros(n_out, X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_out, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        opt.zero_grad()
        z = X @ W.T + b
        if n_classes == 2:
            fit = F.binary_cross_entropy_with_logits(z[:, 0], y.double())
        else:
            fit = F.cross_entropy(z, y)
        total = fit + 0.5 * l2 * W.pow(2).sum()
        total.backward()
        return total

    with torch.enable_grad(), _one_thread():
        opt.step(loss)
    return W.detach(), b.detach()


def train_probe(
    acts: Tensor, labels: Tensor, *, seed: int = 0, holdout: float = 0.25, l2: float = 1e-3, max_iter: int = 500
) -> ProbeResult:
    """Train a linear probe on `acts` [N, d] for `labels` [N] (bools or ints) and test it.

    `holdout` of each class is kept out of training (stratified, seeded by `seed`).
    Features are standardised with the training set's mean and spread before
    fitting, so `l2` (on the mean loss) treats every feature alike; the returned
    weights are mapped back to act on raw activations. Deterministic: the same
    inputs and seed give bit-identical results.
    """
    acts = acts.detach().flatten(1).cpu().double() if acts.dim() > 1 else acts.detach().cpu().double().unsqueeze(1)
    labels = labels.detach().flatten().cpu()
    if len(acts) != len(labels):
        raise SeedbedError(f"{len(acts)} activation rows but {len(labels)} labels: give one label per row")
    if not 0.0 < holdout < 1.0:
        raise SeedbedError(f"holdout={holdout} must be between 0 and 1 (exclusive): it is the held-out fraction")
    classes, y = torch.unique(labels, sorted=True, return_inverse=True)
    counts = torch.bincount(y, minlength=len(classes))
    if len(classes) < 2 or int(counts.min()) < 2:
        raise SeedbedError(
            f"labels need at least two classes with two examples each (counts: {dict(zip(classes.tolist(), counts.tolist()))}): "
            "give more examples or fewer classes"
        )
    train, test = _split(y, holdout, torch.Generator().manual_seed(seed))

    mean = acts[train].mean(0)
    spread = acts[train].std(0, unbiased=False)
    spread = torch.where(spread > 0, spread, torch.ones_like(spread))  # a constant feature stays as it is
    X = (acts - mean) / spread
    W, b = _fit(X[train], y[train], len(classes), l2, max_iter)
    W_raw = W / spread  # so that probe(acts) = W·(acts − mean)/spread + b
    b_raw = b - W_raw @ mean

    z = X @ W.T + b
    if len(classes) == 2:
        predicted, test_auroc = (z[:, 0] > 0).long(), auroc(z[test, 0], y[test] == 1)
        W_raw, b_raw = W_raw[0], b_raw[0]
    else:
        predicted = z.argmax(-1)
        probs = z[test].softmax(-1)
        per_class = [auroc(probs[:, c], y[test] == c) for c in range(len(classes))]
        test_auroc = float(torch.tensor(per_class, dtype=torch.float64).nanmean())
    correct = (predicted == y).double()
    return ProbeResult(
        accuracy=correct[test].mean().item(),
        auroc=test_auroc,
        train_accuracy=correct[train].mean().item(),
        weights=W_raw,
        bias=b_raw,
        classes=classes,
        n_train=len(train),
        n_test=len(test),
    )


# ── on a model ───────────────────────────────────────────────────────────────
def probe_acts(model: Transformer, tokens: Tensor, hook_name: str, positions: int | Tensor | None = None) -> Tensor:
    """Activations at `hook_name`, one row per chosen (sequence, position): [N, d].

    `positions`: None for every position (rows ordered sequence by sequence), an int
    for that position in every sequence, an int tensor [batch] for one position per
    sequence, or a bool mask [batch, pos]. Per-head hooks ([batch, pos, head, d_head])
    are flattened to head·d_head features.
    """
    with evaluating(model):
        _, cache = run_with_cache(model, tokens.to(device_of(model)), hook_name)  # unknown names: nearest ones listed
    x = cache[hook_name]
    if hook_name.endswith(("hook_attn_scores", "hook_pattern")):
        raise SeedbedError(f"'{hook_name}' is [batch, head, query, key], not per position: probe hook_z or a residual hook instead")
    if hook_name == "hook_pos_embed":  # [pos, d_model], the same in every sequence
        x = x.unsqueeze(0).expand(len(tokens), *x.shape)
    x = x.flatten(2)  # [batch, pos, features]
    if positions is None:
        return x.flatten(0, 1)
    if isinstance(positions, int):
        return x[:, positions]
    positions = torch.as_tensor(positions, device=x.device)
    if positions.dtype == torch.bool:
        if positions.shape != x.shape[:2]:
            raise SeedbedError(f"the position mask has shape {tuple(positions.shape)} but the tokens are {tuple(x.shape[:2])}: shape them alike")
        return x[positions]
    if positions.shape != (len(x),):
        raise SeedbedError(f"positions has shape {tuple(positions.shape)}: give one position per sequence ({len(x)}), an int, or a bool mask")
    return x[torch.arange(len(x), device=x.device), positions]


def probe_hook(
    model: Transformer,
    tokens: Tensor,
    labels: Tensor,
    hook_name: str,
    positions: int | Tensor | None = None,
    **train: object,
) -> ProbeResult:
    """Cache `hook_name` on `tokens` (one forward) and train a probe on it for `labels`.

    Labels go with the chosen rows: [batch] for one position per sequence, [batch, pos]
    for every position, [batch, pos] or [n_selected] with a mask. Keyword arguments go
    to `train_probe` (seed, holdout, l2, max_iter).
    """
    acts = probe_acts(model, tokens, hook_name, positions)
    labels = torch.as_tensor(labels)
    if isinstance(positions, Tensor) and positions.dtype == torch.bool and labels.shape == positions.shape:
        labels = labels[positions.to(labels.device)]
    return train_probe(acts, labels.flatten(), **train)  # type: ignore[arg-type]
