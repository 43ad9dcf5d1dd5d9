"""Load a grown model at any checkpoint, with the soil that grew it.

Reading needs only the run folder: the weights come from `checkpoints/`, the
architecture from `conditions.toml`, a text tokenizer from `artifacts.json`. A run
copied to another machine therefore opens there too. A Hugging Face model folder of the
GPT-2 family (config.json + model.safetensors) opens the same way (`seedbed.read.hf`).

A run folder is untrusted input, so the paths of a text soil in its conditions are
not followed unless the caller asks (`corpus=True`): crafted conditions could name
`/usr/share` or a FIFO. Without the corpus `soil` is None while `tokenizer` still
encodes and decodes. The built-in Shakespeare corpus is seedbed's own cached file,
not a path from the run, so it is used when it is cached (reading never downloads).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from seedbed import checkpoint
from seedbed.conditions import Conditions, Text
from seedbed.errors import SeedbedError
from seedbed.model import Transformer
from seedbed.read.hf import HFTokenizer, conditions_of, is_hf_folder, model_from_folder, read_tokenizer, step_of
from seedbed.run import Run
from seedbed.soil import SoilBase, make_soil
from seedbed.soil.text import SHAKESPEARE_CACHE, Tokenizer, default_cache_dir


@dataclass
class Grown:
    """A model at one step of its growth, and what is needed to feed it."""

    model: Transformer
    conditions: Conditions
    soil: SoilBase | None
    tokenizer: Tokenizer | HFTokenizer | None
    step: int
    run: Path  # the run folder, or the Hugging Face model folder (then `hf` is true)
    hf: bool = False

    def decode(self, tokens: list[int] | torch.Tensor) -> str:
        if self.soil is not None:
            return self.soil.decode(tokens)
        if self.tokenizer is None:  # a Hugging Face folder without tokenizer.json: the ids themselves
            return " ".join(str(int(t)) for t in tokens)
        return self.tokenizer.decode([int(t) for t in tokens])

    def _repr_html_(self) -> str:
        """What was loaded, in a notebook: the run, the step and the model's shape (nothing is computed)."""
        from seedbed.read import html

        cfg = self.model.cfg
        shape = (f"{cfg.n_layers} layers × {cfg.n_heads} heads, d_model {cfg.d_model}, d_head {cfg.d_head}, n_ctx {cfg.n_ctx}, "
                 f"d_vocab {cfg.d_vocab}" + (", attention only" if cfg.attn_only else f", d_mlp {cfg.d_mlp}"))
        soil = "a Hugging Face model folder" if self.hf else self.conditions.soil.kind + (
            "" if self.soil is not None else " (not loaded: the saved tokenizer decodes)")
        facts = [("run", str(self.run)), ("step", f"{self.step:,}"), ("model", shape),
                 ("parameters", f"{sum(p.numel() for p in self.model.parameters()):,}"), ("soil", soil)]
        note = "read_heads(g): head scores · attention_pattern(g, layer, head): a pattern · docs/read.md: the rest"
        return html.box("Grown model" + html.at(self.run.name, self.step), html.facts(facts), note)


def checkpoint_steps(run: str | Path) -> list[int]:
    """The steps that have a recorded checkpoint."""
    r = Run.open(run, readonly=True)
    try:
        return [c.step for c in r.checkpoints()]
    finally:
        r.close()


def load(run: str | Path, step: int | None = None, device: str | torch.device = "cpu", corpus: bool = False) -> Grown:
    """The model at `step` (the newest checkpoint by default), in eval mode, with its soil.

    A step without a checkpoint is an error listing the steps that have one; a
    checkpoint whose bytes do not match its recorded sha256 is refused. `corpus`:
    read the files a text soil's conditions name (trust the run folder), so that
    `soil` can give held-out batches; by default they are never touched. A Hugging Face
    model folder has one model: its step is the one its name says (step3000 → 3000), else 0.
    """
    path = Path(run)
    if is_hf_folder(path):
        return _load_hf(path, step, device)
    if path.is_dir() and not (path / "run.sqlite").exists() and not (path / "conditions.toml").exists():
        raise SeedbedError(f"'{path}' is neither a run folder (run.sqlite) nor a Hugging Face model folder (config.json): "
                           "give runs/<name> (seedbed runs lists them) or a folder saved with save_pretrained")
    r = Run.open(path, readonly=True)
    try:
        records, conditions, artifacts = r.checkpoints(), r.conditions, r.artifacts
        if not records:
            raise SeedbedError(f"run '{path}' has no checkpoints yet: grow it first (seedbed grow --resume {path})")
        rec = records[-1] if step is None else next((c for c in records if c.step == step), None)
        if rec is None:
            raise SeedbedError(f"run '{path}' has no checkpoint at step {step}: steps with one are {_list(c.step for c in records)}")
        try:
            loaded = checkpoint.load(r, rec, with_state=False)
        except checkpoint.CorruptCheckpoint as why:
            raise SeedbedError(f"checkpoint at step {rec.step} of '{path}' cannot be read: {why}") from None
    finally:
        r.close()
    with torch.device("meta"):
        model = Transformer(conditions.architecture)
    model = model.to_empty(device="cpu")
    if conditions.architecture.tied_embeddings:  # to_empty gives each parameter its own memory: tie again
        model.unembed.weight = model.embed.weight
    checkpoint.load_into(model, loaded.weights)
    model.eval().to(device)
    soil, tokenizer = _soil_of(conditions, artifacts, corpus)
    return Grown(model, conditions, soil, tokenizer, rec.step, path)


def _load_hf(folder: Path, step: int | None, device: str | torch.device) -> Grown:
    own = step_of(folder) or 0
    if step is not None and step != own:
        raise SeedbedError(f"'{folder}' is one Hugging Face checkpoint, of step {own}: leave out --step, or give the folder of step {step}")
    model, _ = model_from_folder(folder)
    model.to(device)
    return Grown(model, conditions_of(folder, model.cfg), None, read_tokenizer(folder), own, folder, hf=True)


def _soil_of(conditions: Conditions, artifacts: dict, corpus: bool) -> tuple[SoilBase | None, Tokenizer | None]:
    if not isinstance(conditions.soil, Text):
        return make_soil(conditions), None
    tokenizer = _saved_tokenizer(artifacts)
    if conditions.soil.paths and not corpus:
        return None, tokenizer  # a run folder's paths are not followed unless asked: the saved tokenizer is enough
    if conditions.soil.corpus == "shakespeare" and not (default_cache_dir() / SHAKESPEARE_CACHE).is_file():
        return None, tokenizer  # reading never downloads: the saved tokenizer is enough
    try:
        soil = make_soil(conditions)
    except SeedbedError:  # the corpus is not on this machine: reading still works, with the saved tokenizer
        return None, tokenizer
    if soil.artifacts() != artifacts:  # the corpus changed since: trust the tokenizer the model grew with
        return None, tokenizer
    return soil, tokenizer


def _saved_tokenizer(artifacts: dict) -> Tokenizer | None:
    """The tokenizer in artifacts.json; one that does not parse is a one-line error, not a traceback."""
    if "tokenizer" not in artifacts:
        return None
    try:
        return Tokenizer.from_json(artifacts["tokenizer"])
    except SeedbedError as e:
        why = f" ({e})"
    except (KeyError, TypeError, ValueError, AttributeError):
        why = ""
    raise SeedbedError(f"artifacts.json: the saved tokenizer cannot be read{why}: restore the file from a copy")


def _list(steps) -> str:
    steps = list(steps)
    shown = ", ".join(str(s) for s in steps[:12])
    return shown + (f", … {steps[-1]} ({len(steps)} in all)" if len(steps) > 12 else "")
