"""Sampling: the model writes, one token at a time, greedily or seeded, with a KV cache.

Each step runs only the newest token, reading the earlier positions' keys and values from the
cache (`seedbed.model.KVCache`), so writing n tokens after a prefix of p costs p + n - 1 token
positions of forward, not the p·n + n²/2 of re-running the whole prefix at every step.

Past the context: positions are learned and absolute, so once the sequence is longer than
`n_ctx` every kept token changes position at each step and no cached key stays valid. The window
then slides one token at a time, exactly as a plain loop that feeds the last `n_ctx` tokens does:
each such step recomputes the cache over the last `n_ctx` tokens (n_ctx positions per new token,
as in that loop; linear in the tokens written, never in the whole sequence).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from seedbed.errors import SeedbedError
from seedbed.model import KVCache, Transformer, device_of, evaluating


def sample(model: Transformer, tokens: Tensor, max_new: int, temperature: float = 0.0, top_k: int | None = None,
           seed: int | None = None, stop: int | None = None) -> Tensor:
    """`tokens` followed by up to `max_new` tokens the model writes after them.

    tokens: [batch, pos] (or [pos]: one sequence, returned as [pos + new]), the prefixes, all the same length.
    temperature: 0 takes the most likely token (ties: the lowest id); above 0, logits / temperature are
        sampled from, with a generator of its own seeded by `seed` (required then; the global RNG is never used).
    top_k: sample among the k most likely tokens only.
    stop: a token that ends a sequence: after it, that row is filled with `stop`, and sampling ends early
        when every row has written it.
    Returns [batch, pos + new] on the model's device (new = max_new unless every row stopped sooner).
    The model runs in eval mode without gradients; its mode is restored after.
    """
    one = tokens.dim() == 1
    tokens = _checked(model, tokens[None] if one else tokens, max_new, temperature, top_k, seed, stop)
    written = _written(model, tokens, max_new, temperature, top_k, seed, stop)
    seq = torch.cat([tokens, *(new[:, None] for new in written)], dim=1)
    return seq[0] if one else seq


def stream(model: Transformer, tokens: Tensor, max_new: int, temperature: float = 0.0, top_k: int | None = None,
           seed: int | None = None, stop: int | None = None) -> Iterator[int]:
    """The tokens `sample` writes after one sequence `tokens` [pos], each yielded as soon as it is chosen.

    For a live display (`seedbed chat`): the same tokens as `sample(...)[len(tokens):]`, same arguments;
    it ends after `stop` is written. Arguments are checked now, not at the first `next`. The model stays
    in eval mode until the iterator ends or is closed.
    """
    if tokens.dim() != 1:
        raise SeedbedError(f"tokens has shape {tuple(tokens.shape)}: stream writes after one sequence, [pos]")
    checked = _checked(model, tokens[None], max_new, temperature, top_k, seed, stop)
    return (int(new[0]) for new in _written(model, checked, max_new, temperature, top_k, seed, stop))


def _written(model: Transformer, tokens: Tensor, max_new: int, temperature: float, top_k: int | None,
             seed: int | None, stop: int | None) -> Iterator[Tensor]:
    """The new token of every row [batch], step by step: the one loop behind `sample` and `stream`.

    Gradients are off around each forward only, never across a `yield` (that would leak to the caller).
    """
    if max_new == 0:
        return
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=tokens.device).manual_seed(seed)  # type: ignore[arg-type]
    n_ctx = model.cfg.n_ctx
    seq, cache = tokens, KVCache.empty(model.cfg.n_layers)
    done = torch.zeros(len(tokens), dtype=torch.bool, device=tokens.device)
    with evaluating(model):
        with torch.no_grad():
            logits = model(seq[:, -n_ctx:], cache)[:, -1]
        for i in range(max_new):
            new = _choose(logits, temperature, top_k, generator)
            if stop is not None:
                new = torch.where(done, stop, new)
                done |= new == stop
            seq = torch.cat([seq, new[:, None]], dim=1)
            yield new
            if i == max_new - 1 or bool(done.all()):
                break
            with torch.no_grad():
                if cache.length == n_ctx:  # full: slide the window, recomputing the cache over the last n_ctx tokens
                    cache = KVCache.empty(model.cfg.n_layers)
                    logits = model(seq[:, -n_ctx:], cache)[:, -1]
                else:
                    logits = model(seq[:, -1:], cache)[:, -1]


def _choose(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """The next token of each row, from its logits [batch, d_vocab]."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def _checked(model: Transformer, tokens: Tensor, max_new: int, temperature: float, top_k: int | None,
             seed: int | None, stop: int | None) -> Tensor:
    """The prefixes on the model's device, once every argument is known to make sense (else one line)."""
    vocab = model.cfg.d_vocab
    assert vocab is not None  # a built Transformer has its vocabulary
    if tokens.dim() != 2:
        raise SeedbedError(f"tokens has shape {tuple(tokens.shape)}: give [batch, pos] (or [pos] for one sequence)")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise SeedbedError(f"tokens are {tokens.dtype}: give token ids as integers (torch.long)")
    if tokens.shape[1] == 0:
        raise SeedbedError("the prefix is empty: give at least one token per sequence to sample after")
    if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise SeedbedError(f"tokens run from {int(tokens.min())} to {int(tokens.max())}: the model's vocabulary is 0…{vocab - 1}")
    if max_new < 0:
        raise SeedbedError(f"max_new is {max_new}: give the number of tokens to write, 0 or more")
    if not temperature >= 0:  # also refuses NaN
        raise SeedbedError(f"temperature is {temperature}: give 0 (greedy) or more")
    if top_k is not None and top_k < 1:
        raise SeedbedError(f"top_k is {top_k}: give 1 or more, or None to sample from the whole vocabulary")
    if temperature > 0 and seed is None:
        raise SeedbedError("sampling at temperature > 0 needs a seed: pass seed=N (same seed, same tokens)")
    if stop is not None and not 0 <= stop < vocab:
        raise SeedbedError(f"stop is {stop}: give a token of the model's vocabulary, 0…{vocab - 1}")
    return tokens.long().to(device_of(model))
