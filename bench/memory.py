"""Peak memory of turning a text corpus into a soil, as a multiple of the corpus size.

    python bench/memory.py              # a 200 MB synthetic corpus (a few minutes)
    python bench/memory.py --mb 20      # smaller: a smoke test
    python bench/memory.py --no-old     # skip the old in-memory path (it needs ~36x the corpus in RAM)

Each measurement runs in its own process, and its peak resident memory is that process's own
`ru_maxrss` (from `os.wait4`, so one child's peak never hides in another's):

| row | what the child does |
| --- | --- |
| baseline | imports torch and seedbed, nothing else: what every row pays before touching the corpus |
| reference: read() | `open(path).read()`: the whole corpus as one str, the least an in-memory path can hold |
| old in-memory path | seedbed before the token map: read the text, `Tokenizer.fit`, `encode_array`, hash the str |
| TextSoil, cold cache | today's soil: two streaming passes, the token map written to an empty cache |
| TextSoil, warm cache | the same with the map already cached: one streaming pass (the hash), then the map |

Both TextSoil rows also draw 100 batches of 64 x 257 tokens, so the map is read, not just made.
"x corpus" is the peak over the corpus' size in bytes; "net" subtracts the baseline's peak first.
The target is net <= 2x. The corpus is synthetic prose: words, accented letters and typographic
punctuation (’ and —, beyond Latin-1, as in most real text), fewer than 256 distinct characters.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load, say

WORDS = ["seed", "bed", "grow", "root", "leaf", "soil", "rain", "sun", "café", "naïve", "garçon", "it’s", "—"]

CHILD = {
    "baseline": "",
    "read": "text = open(path, encoding='utf-8').read()",
    "old": """
import hashlib
from seedbed.soil.text import Tokenizer
text = open(path, encoding='utf-8', errors='replace').read()
tok = Tokenizer.fit(text, 'auto')
data = torch.from_numpy(tok.encode_array(text))
sha = hashlib.sha256(text.encode('utf-8', errors='surrogatepass')).hexdigest()
""",
    "new": """
from seedbed.conditions import Text
from seedbed.soil.text import TextSoil
soil = TextSoil(Text(paths=[path]), seed=0, n_ctx=256)
for cursor in range(100):
    soil.train_batch(cursor, 64)
""",
}
PRELUDE = "import sys, torch, seedbed.soil.text\npath = sys.argv[1]\n"
LABELS = {
    "baseline": "baseline (import only)",
    "read": "reference: read()",
    "old": "old in-memory path",
    "new-cold": "TextSoil, cold cache",
    "new-warm": "TextSoil, warm cache",
}


def make_corpus(path: Path, mb: int) -> int:
    """`mb` MiB of words, written a block at a time (the generator never holds the corpus)."""
    rng = random.Random(0)
    block = " ".join(rng.choice(WORDS) + ("\n" if rng.random() < 0.1 else "") for _ in range(200_000))
    target = mb << 20
    with open(path, "w", encoding="utf-8") as f:
        written, i = 0, 0
        while written < target:
            piece = f"{i}\n{block[i % 1000 :]}{block[: i % 1000]}\n"
            written += f.write(piece)  # characters; the bytes are counted below
            i += 1
    return path.stat().st_size


def measure(kind: str, corpus: Path, cache: Path) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of one child process."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "OMP_NUM_THREADS": "1"}
    code = PRELUDE + CHILD[kind.removesuffix("-cold").removesuffix("-warm")]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(corpus)], env=env, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{kind} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss * 1024, wall  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200, help="corpus size in MiB (default 200)")
    ap.add_argument("--no-old", action="store_true", help="skip the old in-memory path")
    args = ap.parse_args()
    kinds = ["baseline", "read"] + ([] if args.no_old else ["old"]) + ["new-cold", "new-warm"]
    say(f"seedbed text soil memory benchmark   {time.strftime('%Y-%m-%d %H:%M:%S')}   (load {load()})")
    with tempfile.TemporaryDirectory(prefix="seedbed-bench-memory-") as tmp:
        corpus, cache = Path(tmp) / "corpus.txt", Path(tmp) / "cache"
        size = make_corpus(corpus, args.mb)
        say(f"corpus: {size / 2**20:,.1f} MiB of synthetic text; each row is one child process")
        say(f"   {'':<26}{'peak RSS':>10}{'x corpus':>10}{'net':>8}{'wall':>8}")
        say(f"   {'':<26}{'MiB':>10}{'':>10}{'x':>8}{'s':>8}")
        base = 0
        for kind in kinds:
            peak, wall = measure(kind, corpus, cache)
            base = peak if kind == "baseline" else base
            net = (peak - base) / size
            say(f"   {LABELS[kind]:<26}{peak / 2**20:>10,.0f}{peak / size:>10.2f}{net:>8.2f}{wall:>8.1f}   (load {load()})")
        maps = list((cache / "seedbed" / "tokens").glob("*.bin"))
        say(f"token map: {sum(m.stat().st_size for m in maps) / 2**20:,.1f} MiB on disk ({len(maps)} file)")


if __name__ == "__main__":
    main()
