"""Read a Hugging Face model folder as a seedbed model, so every read tool, score and observer works on it.

A folder written by `save_pretrained` (or fetched with `hf download … --local-dir`) holds
`config.json` and `model.safetensors` (or `pytorch_model.bin`). Models of the GPT-2 family
(`model_type = "gpt2"`: learned positions, Conv1D weights, `gelu_new`, tied or untied
embeddings) map exactly onto `seedbed.model.Transformer`; the mapping is the inverse of
`seedbed.export.hf_weights`. Other architectures are refused with one line naming the
feature seedbed's model lacks (docs/hf.md says why GPT-NeoX and GPT-Neo are not mapped).

The folder is untrusted input, read without `transformers`:
- config.json is plain JSON; a folder asking for remote code (`auto_map`) is refused, nothing is imported;
- weights are read with safetensors, or `torch.load(weights_only=True)` (tensors only, nothing unpickled
  beyond them); files are opened only if they are regular files inside the folder, never through a link;
- the config's sizes give every tensor's expected shape, and the weight file is refused if it is larger
  than those tensors (plus GPT-2's causal-mask buffers) could be, before anything is read into memory.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from seedbed import contained
from seedbed.conditions import Architecture, Conditions, RepeatedBlocks
from seedbed.errors import SeedbedError
from seedbed.model import Transformer

CONFIG_MAX_BYTES = 2**20  # a config is a few kilobytes
TOKENIZER_MAX_BYTES = 64 * 2**20  # GPT-2's tokenizer.json is 1.4 MB; a multilingual one tens of MB
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LN_EPS = 1e-5  # seedbed.model.LayerNorm's eps, which GPT-2 and Pythia share
# Hugging Face activation names → seedbed's (gelu_pytorch_tanh is gelu_new computed by the fused kernel)
ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
# architectures seedbed's model does not have: the one feature that stops each (docs/hf.md)
REFUSED = {
    "gpt_neox": "rotary position embeddings and parallel attention + MLP (GPT-NeoX, e.g. Pythia)",
    "gpt_neo": "local attention layers and unscaled attention scores (GPT-Neo, e.g. TinyStories)",
}
STEP_NAME = re.compile(r"(?:step|checkpoint|ckpt|global_step|iter)[-_]?(\d+)", re.IGNORECASE)


def is_hf_folder(path: str | Path) -> bool:
    """A folder with config.json and no run.sqlite: what `save_pretrained` and `hf download` leave."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").exists() and not (path / "run.sqlite").exists()


def step_of(folder: Path) -> int | None:
    """The training step a checkpoint folder's name says (step3000, checkpoint-500, …), if it says one."""
    m = STEP_NAME.fullmatch(folder.name) or STEP_NAME.search(folder.name)
    return int(m.group(1)) if m else None


# ── config.json → Architecture ───────────────────────────────────────────────
def read_config(folder: Path) -> dict[str, Any]:
    """config.json as a dict; a folder that is no model or asks to run its own code is a one-line error."""
    fix = "give a folder written by save_pretrained or hf download (config.json beside model.safetensors)"
    if not folder.is_dir():
        raise SeedbedError(f"'{folder}' is not a folder: {fix}")
    try:
        raw = contained.open_regular(contained.inside(folder, "config.json"), CONFIG_MAX_BYTES)
        config = json.loads(raw)
    except FileNotFoundError:
        raise SeedbedError(f"'{folder}' has no config.json, so it is no Hugging Face model: {fix}") from None
    except contained.Unsafe as err:
        raise SeedbedError(f"{err}: {fix}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise SeedbedError(f"'{folder / 'config.json'}' is not valid JSON ({err}): {fix}") from None
    if not isinstance(config, dict):
        raise SeedbedError(f"'{folder / 'config.json'}' does not hold a JSON object: {fix}")
    if config.get("auto_map") or config.get("trust_remote_code"):
        raise SeedbedError(f"'{folder}' asks to run its own Python code (auto_map): seedbed never runs code from a model folder")
    return config


def architecture(config: dict[str, Any]) -> Architecture:
    """The seedbed Architecture that computes what this config's model computes, or a one-line refusal."""
    kind = config.get("model_type")
    if kind in REFUSED:
        raise SeedbedError(f"model_type {kind!r} is not supported: seedbed's model has no {REFUSED[kind]}; "
                           "seedbed reads the GPT-2 family (model_type 'gpt2')")
    if kind != "gpt2":
        raise SeedbedError(f"model_type {kind!r} is not supported: seedbed reads the GPT-2 family (model_type 'gpt2')")
    return _gpt2_architecture(config)


def _gpt2_architecture(c: dict[str, Any]) -> Architecture:
    """GPT2Config → Architecture; each GPT-2 option seedbed's model cannot follow is refused by name."""
    sizes = {k: c.get(k) for k in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size")}
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SeedbedError(f"config.json: {key} = {value!r} is not a positive whole number: the folder is not a GPT-2 model")
    n_inner = c.get("n_inner") or 4 * sizes["n_embd"]
    act = c.get("activation_function", "gelu_new")
    unsupported = [
        (act not in ACTIVATIONS, f"activation_function = {act!r} (seedbed has {', '.join(ACTIVATIONS)})"),
        (c.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx = true"),
        (not c.get("scale_attn_weights", True), "scale_attn_weights = false (unscaled attention scores)"),
        (c.get("add_cross_attention", False), "add_cross_attention = true"),
        (not math.isclose(float(c.get("layer_norm_epsilon", LN_EPS)), LN_EPS), f"layer_norm_epsilon = {c.get('layer_norm_epsilon')} (seedbed: {LN_EPS})"),
        (sizes["n_embd"] % sizes["n_head"] != 0, f"n_embd = {sizes['n_embd']} not divisible by n_head = {sizes['n_head']}"),
    ]
    for bad, what in unsupported:
        if bad:
            raise SeedbedError(f"config.json: {what} is not supported: seedbed's model cannot compute it exactly")
    try:
        return Architecture(
            n_layers=sizes["n_layer"], d_model=sizes["n_embd"], n_heads=sizes["n_head"], d_mlp=n_inner,
            n_ctx=sizes["n_positions"], d_vocab=sizes["vocab_size"], act=ACTIVATIONS[act],
            tied_embeddings=bool(c.get("tie_word_embeddings", True)),
        )
    except ValueError as err:  # pydantic's, e.g. a size past the schema's bounds
        raise SeedbedError(f"config.json: its sizes do not make a seedbed architecture ({err.__class__.__name__}): {_first_line(err)}") from None


# ── weights ──────────────────────────────────────────────────────────────────
def gpt2_names(arch: Architecture) -> dict[str, tuple[str, Callable[[Tensor], Tensor]]]:
    """seedbed parameter → (GPT-2 tensor name without the `transformer.` prefix, how to turn it into ours).

    GPT-2's Conv1D stores [in, out] and nn.Linear [out, in], hence the transposes; c_attn's
    Q, K, V blocks are already in the order of seedbed's fused qkv (seedbed.export.hf_weights).
    """
    same, T = (lambda t: t), (lambda t: t.T)
    names = {"embed.weight": ("wte.weight", same), "pos_embed.weight": ("wpe.weight", same),
             "ln_final.weight": ("ln_f.weight", same), "ln_final.bias": ("ln_f.bias", same)}
    for i in range(arch.n_layers):
        ours, theirs = f"blocks.{i}.", f"h.{i}."
        for a, b, how in (("ln1", "ln_1", same), ("ln2", "ln_2", same), ("attn.qkv", "attn.c_attn", T),
                          ("attn.out", "attn.c_proj", T), ("mlp.fc_in", "mlp.c_fc", T), ("mlp.fc_out", "mlp.c_proj", T)):
            names[f"{ours}{a}.weight"] = (f"{theirs}{b}.weight", how)
            names[f"{ours}{a}.bias"] = (f"{theirs}{b}.bias", same)
    if not arch.tied_embeddings:
        names["unembed.weight"] = ("lm_head.weight", same)
    return names


def _expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """GPT-2 name → shape, from a shapes-only model: what the weight file must hold."""
    with torch.device("meta"):
        ours = Transformer(arch).state_dict()
    return {theirs: tuple(how(ours[name]).shape) for name, (theirs, how) in gpt2_names(arch).items()}


def _weight_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        try:
            path = contained.inside(folder, name)
            contained.check_kind(path, "file")
        except contained.Unsafe as err:
            raise SeedbedError(f"{err}: copy the model folder without links") from None
        if path.exists():
            return path
    if any((folder / n).exists() for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")):
        raise SeedbedError(f"'{folder}' holds its weights in several shards: seedbed reads one model.safetensors (models up to a few GB)")
    raise SeedbedError(f"'{folder}' has config.json but no {' or '.join(WEIGHT_FILES)}: fetch the weights too")


def _strip(name: str) -> str:
    return name.removeprefix("transformer.")


def read_weights(folder: Path, arch: Architecture) -> dict[str, Tensor]:
    """The folder's GPT-2 tensors (names without `transformer.`), as float32, checked against the config's shapes."""
    shapes = _expected_shapes(arch)
    path = _weight_file(folder)
    # float32 tensors, plus the causal-mask buffers old GPT-2 files carry ([1, 1, n_ctx, n_ctx] per layer), plus headers
    limit = 4 * sum(math.prod(s) for s in shapes.values()) + 4 * arch.n_layers * (arch.n_ctx**2 + 1) + 2**24
    if path.stat().st_size > limit:
        raise SeedbedError(f"'{path}' is {path.stat().st_size:,} bytes, more than config.json's sizes allow ({limit:,}): "
                           "the weights do not belong to this config")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                found = {_strip(k): tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
                _check_shapes(path, found, shapes)
                tensors = {_strip(k): f.get_tensor(k) for k in f.keys() if _strip(k) in shapes}  # noqa: SIM118
        else:
            data = contained.open_regular(path, limit)
            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
                raise SeedbedError(f"'{path}' does not hold a dict of tensors: it is not a model's weights")
            tensors = {_strip(k): v for k, v in loaded.items()}
            _check_shapes(path, {k: tuple(v.shape) for k, v in tensors.items()}, shapes)
    except SeedbedError:
        raise
    except Exception as err:  # noqa: BLE001 — whatever the parser says, the file is not weights we can read
        raise SeedbedError(f"'{path}' cannot be read as weights ({type(err).__name__}): fetch it again") from None
    return {k: tensors[k].to(torch.float32) for k in shapes}


def _check_shapes(path: Path, found: dict[str, tuple[int, ...]], shapes: dict[str, tuple[int, ...]]) -> None:
    for name, shape in shapes.items():
        if name == "lm_head.weight" and name not in found:
            continue
        if name not in found:
            raise SeedbedError(f"'{path}' has no tensor '{name}', which config.json's model needs: the weights do not belong to this config")
        if found[name] != shape:
            raise SeedbedError(f"'{path}': '{name}' is {found[name]}, but config.json makes it {shape}: the weights do not belong to this config")


def model_from_folder(folder: str | Path) -> tuple[Transformer, dict[str, Any]]:
    """The folder's model as a seedbed Transformer (eval mode, CPU), and its config."""
    folder = Path(folder)
    config = read_config(folder)
    arch = architecture(config)
    theirs = read_weights(folder, arch)
    with torch.device("meta"):
        model = Transformer(arch)
    model = model.to_empty(device="cpu")
    if arch.tied_embeddings:  # to_empty gives each parameter its own memory: tie again
        model.unembed.weight = model.embed.weight
    state = {name: how(theirs[src]).contiguous() for name, (src, how) in gpt2_names(arch).items()}
    result = model.load_state_dict(state, strict=False)  # tied: unembed.weight is embed.weight, given once
    assert not result.unexpected_keys and set(result.missing_keys) <= ({"unembed.weight"} if arch.tied_embeddings else set())
    return model.eval(), config


def conditions_of(folder: Path, arch: Architecture) -> Conditions:
    """Conditions that describe the model (its architecture); the soil is a stand-in, since the folder's is unknown.

    Reading a Hugging Face model measures it on made-up sequences (random and repeated tokens),
    which is what the repeated-blocks soil names; nothing was grown on it.
    """
    return Conditions(name=f"hf-{folder.name}", soil=RepeatedBlocks(vocab_size=max(3, arch.d_vocab or 3)), architecture=arch)


# ── tokenizer ────────────────────────────────────────────────────────────────
class HFTokenizer:
    """The folder's tokenizer.json, read by the `tokenizers` library (Rust, no code run) when it is installed."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def read_tokenizer(folder: Path) -> HFTokenizer | None:
    """tokenizer.json if the folder has one and `tokenizers` is installed; else None (token ids are shown instead)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - installed with transformers (the hf extra)
        return None
    try:
        raw = contained.open_regular(contained.inside(folder, "tokenizer.json"), TOKENIZER_MAX_BYTES)
    except FileNotFoundError:
        return None
    except contained.Unsafe as err:
        raise SeedbedError(f"{err}: copy the model folder without links") from None
    try:
        return HFTokenizer(Tokenizer.from_str(raw.decode("utf-8")))
    except Exception as err:  # noqa: BLE001 — the tokenizers library's own errors
        raise SeedbedError(f"'{folder / 'tokenizer.json'}' cannot be read ({_first_line(err)}): fetch it again, or delete it") from None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
