"""Checkpoints that a crash cannot corrupt silently.

Each checkpoint is two files:
- `step-NNNNNN.safetensors`: the weights, readable by any safetensors tool; its
  metadata holds the step and the sha256 of the state file;
- `step-NNNNNN.state.pt`: optimiser, RNG states, data cursor — what resuming needs.

Both are written to a temporary name, fsynced, then renamed, so the newest name on
disk is always complete. The weights' sha256 goes into run.sqlite; together with
the state hash in the metadata, one recorded hash vouches for both files.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from seedbed.files import write_atomic
from seedbed.run import CheckpointRecord, Run


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (safetensors refuses shared memory)."""
    seen: set[int] = set()
    out = {}
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().cpu().contiguous()
    return out


@dataclass
class Encoded:
    """A checkpoint as bytes, ready to write: growth keeps a few recent ones in memory
    so that, when a transition is detected, the steps just before it can still be saved."""

    step: int
    tokens_seen: int
    weights: bytes
    state: bytes


def encode(model: nn.Module, step: int, tokens_seen: int, state: dict[str, Any]) -> Encoded:
    buf = io.BytesIO()
    torch.save(state, buf)
    state_bytes = buf.getvalue()
    meta = {"step": str(step), "tokens_seen": str(tokens_seen), "state_sha256": hashlib.sha256(state_bytes).hexdigest()}
    return Encoded(step, tokens_seen, st_save(weights_of(model), metadata=meta), state_bytes)


def write(run: Run, enc: Encoded) -> CheckpointRecord:
    """Write an encoded checkpoint (state first, then the weights that vouch for it) and record it."""
    stem = run.path / "checkpoints" / f"step-{enc.step:06d}"
    write_atomic(stem.with_suffix(".state.pt"), enc.state)
    weights_file = stem.with_suffix(".safetensors")
    write_atomic(weights_file, enc.weights)
    rec = CheckpointRecord(enc.step, str(weights_file.relative_to(run.path)), hashlib.sha256(enc.weights).hexdigest(), enc.tokens_seen)
    run.record_checkpoint(rec)
    return rec


def save(run: Run, model: nn.Module, step: int, tokens_seen: int, state: dict[str, Any]) -> CheckpointRecord:
    """Write the checkpoint of `step` and record it in the run."""
    return write(run, encode(model, step, tokens_seen, state))


@dataclass
class Loaded:
    record: CheckpointRecord
    weights: dict[str, torch.Tensor]
    state: dict[str, Any] | None


class CorruptCheckpoint(Exception):
    """A checkpoint whose bytes do not match its recorded hash (or is missing)."""


def load(run: Run, rec: CheckpointRecord, with_state: bool = True) -> Loaded:
    """Read a checkpoint, refusing it if any hash does not match."""
    wfile = run.path / rec.file
    try:
        data = wfile.read_bytes()
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{rec.file} is missing") from None
    if hashlib.sha256(data).hexdigest() != rec.sha256:
        raise CorruptCheckpoint(f"{rec.file} does not match its recorded sha256")
    weights = st_load(data)
    state = None
    if with_state:
        sfile = wfile.with_name(wfile.name.removesuffix(".safetensors") + ".state.pt")
        expected = safetensors_metadata(data).get("state_sha256")
        try:
            sdata = sfile.read_bytes()
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{sfile.relative_to(run.path)} is missing") from None
        if hashlib.sha256(sdata).hexdigest() != expected:
            raise CorruptCheckpoint(f"{sfile.relative_to(run.path)} does not match the hash in its weights file")
        state = torch.load(io.BytesIO(sdata), weights_only=True)
    return Loaded(rec, weights, state)


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (an 8-byte length, then a JSON header)."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})


def load_into(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load weights saved by `save` (tied parameters were stored once)."""
    full = dict(weights)
    for name, t in model.state_dict().items():
        if name not in full:  # a tied duplicate: find the tensor it shares memory with
            twin = next(n for n, u in model.state_dict().items() if u.data_ptr() == t.data_ptr() and n in weights)
            full[name] = weights[twin]
    model.load_state_dict(full)


def newest_valid(run: Run, with_state: bool = True, say=print) -> Loaded | None:
    """The newest checkpoint whose hashes verify; corrupt ones are set aside (renamed, not deleted)."""
    for rec in reversed(run.checkpoints()):
        try:
            return load(run, rec, with_state)
        except CorruptCheckpoint as why:
            say(f"checkpoint at step {rec.step} is corrupt ({why}): falling back to the previous one")
            run.log_event(rec.step, "corrupt-checkpoint", str(why))
            for f in (run.path / rec.file).parent.glob(f"step-{rec.step:06d}.*"):
                if not f.name.endswith(".corrupt"):
                    f.rename(f.with_name(f.name + ".corrupt"))
            run.forget_checkpoint(rec.step)
    return None
