"""Sampling with the KV cache against the naive loop that re-runs the whole prefix at every step.

    python bench/sample.py                # 256 new tokens after 16, greedy, batch 1: the ratio naive / cached
    python bench/sample.py --new 512 --batch 8 --repeats 5

The model: 2 layers, d_model 128, 4 heads, d_mlp 512, vocab 1000, n_ctx = prefix + new (so no window
slides), random weights (speed does not depend on training), fp32, eval mode. Both loops write the same
tokens (checked); they are timed interleaved (naive, cached, naive, …), and the best and the median of
the repeats are printed with their ratio. The machine is shared: compare the ratio, not absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import load, say  # bench/ is on sys.path when a script here runs

from seedbed.conditions import Architecture
from seedbed.model import Transformer
from seedbed.sample import sample


@torch.no_grad()
def naive(model: Transformer, tokens: torch.Tensor, max_new: int) -> torch.Tensor:
    """Greedy the plain way (as mirage's `greedy` does): the whole sequence through the model at every step."""
    seq = tokens
    for _ in range(max_new):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", type=int, default=16)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arch = Architecture(n_layers=2, d_model=128, n_heads=4, d_mlp=512, n_ctx=args.prefix + args.new, d_vocab=1000)
    model = Transformer(arch, seed=0).eval()
    tokens = torch.randint(0, 1000, (args.batch, args.prefix), generator=torch.Generator().manual_seed(0))
    say(f"sampling {args.new} tokens after {args.prefix}, batch {args.batch}, {torch.get_num_threads()} threads; "
        f"load {load()}")
    naive_s, cached_s = [], []
    for _ in range(args.repeats):
        t_naive, a = timed(lambda: naive(model, tokens, args.new))
        t_cached, b = timed(lambda: sample(model, tokens, args.new))
        assert torch.equal(a, b), "the cached and naive loops wrote different tokens"
        naive_s.append(t_naive)
        cached_s.append(t_cached)
        say(f"  naive {t_naive:7.3f} s   cached {t_cached:7.3f} s   ratio {t_naive / t_cached:5.1f}x   load {load()}")
    made = args.new * args.batch  # tokens written per measurement
    for name, pick in (("best", min), ("median", statistics.median)):
        say(f"{name:>6}: naive {pick(naive_s):7.3f} s ({made / pick(naive_s):8,.0f} tokens/s)   "
            f"cached {pick(cached_s):7.3f} s ({made / pick(cached_s):8,.0f} tokens/s)   "
            f"naive / cached = {pick(naive_s) / pick(cached_s):.1f}x")


if __name__ == "__main__":
    main()
