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
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from seedbed import budget, contained
from seedbed.errors import SeedbedError
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
    torch.save(interned(state), buf)
    state_bytes = buf.getvalue()
    meta = {"step": str(step), "tokens_seen": str(tokens_seen), "state_sha256": hashlib.sha256(state_bytes).hexdigest()}
    return Encoded(step, tokens_seen, sorted_metadata(st_save(weights_of(model), metadata=meta)), state_bytes)


def interned(obj: Any) -> Any:
    """`obj` with every string interned, so the state file's bytes depend on its values alone.

    Pickle writes a string once and refers back to it when the same object comes again. A state restored
    from a checkpoint holds its own copies of strings such as 'step', a fresh one holds the interned
    literals: the same values would be written as different bytes, and the recorded sha256 would change
    after every resume.
    """
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {interned(k): interned(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [interned(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(interned(v) for v in obj)
    return obj


def sorted_metadata(data: bytes) -> bytes:
    """The same safetensors file with its `__metadata__` keys in sorted order.

    safetensors writes metadata from a hash map, so its key order (and the file's bytes) changes from one
    process to the next; sorted, the same weights give the same file, byte for byte. Only the order moves,
    so the header keeps its length and the tensors their offsets.
    """
    n = int.from_bytes(data[:8], "little")
    raw = data[8 : 8 + n]
    header = json.loads(raw)
    if not isinstance(header.get("__metadata__"), dict):
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(new) > n or new != new.strip():
        return data  # not the layout this expects: keep the library's bytes
    return data[:8] + new.ljust(n, b" ") + data[8 + n :]


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
    """A checkpoint that cannot be trusted: missing, outside its run, not a regular file, too large,
    not matching its recorded hash, or not decodable."""


# The largest checkpoint file read into memory: a file larger than the machine's memory cannot be loaded,
# and a link to /dev/zero or a sparse file must not be tried.
def max_checkpoint_bytes() -> int:
    return budget.machine_memory() or 64 * 2**30


STATE_KEYS = ("step", "optimizer", "rng", "cuda_rng")  # what resuming reads from a state file


def load(run: Run, rec: CheckpointRecord, with_state: bool = True) -> Loaded:
    """Read a checkpoint, refusing it (CorruptCheckpoint) unless every byte is inside the run and vouched for."""
    try:
        wfile = contained.inside(run.path, rec.file)
    except contained.Unsafe as why:
        raise CorruptCheckpoint(str(why)) from None
    data = _read(run, wfile, max_checkpoint_bytes())
    if hashlib.sha256(data).hexdigest() != rec.sha256:
        raise CorruptCheckpoint(f"{rec.file} does not match its recorded sha256")
    try:
        weights = st_load(data)
        expected = safetensors_metadata(data).get("state_sha256")
    except Exception as err:  # noqa: BLE001 — whatever the parser says, the file is not a checkpoint we wrote
        raise CorruptCheckpoint(f"{rec.file} is not a readable safetensors file ({type(err).__name__})") from None
    state = None
    if with_state:
        sfile = wfile.with_name(wfile.name.removesuffix(".safetensors") + ".state.pt")
        srel = sfile.relative_to(run.path)
        # optimiser moments are twice the weights; RNG states and step counts add a little
        sdata = _read(run, sfile, 4 * len(data) + 2**26)
        if hashlib.sha256(sdata).hexdigest() != expected:
            raise CorruptCheckpoint(f"{srel} does not match the hash in its weights file")
        try:
            state = torch.load(io.BytesIO(sdata), weights_only=True)
        except Exception as err:  # noqa: BLE001 — a poisoned pickle or a broken archive: refused, never unpickled further
            raise CorruptCheckpoint(f"{srel} cannot be decoded as a resume state ({type(err).__name__})") from None
        if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
            raise CorruptCheckpoint(f"{srel} does not hold a resume state (the keys {', '.join(STATE_KEYS)})")
    return Loaded(rec, weights, state)


def _read(run: Run, path: Path, max_bytes: int) -> bytes:
    """A checkpoint file's bytes: a regular file, not a link, no larger than `max_bytes`."""
    rel = path.relative_to(run.path)
    try:
        return contained.open_regular(path, max_bytes)
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{rel} is missing") from None
    except contained.Unsafe as why:
        raise CorruptCheckpoint(str(why)) from None
    except OSError as err:
        raise CorruptCheckpoint(f"{rel} cannot be read ({err.strerror or err})") from None


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (an 8-byte length, then a JSON header)."""
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + n]).get("__metadata__", {})
    return meta if isinstance(meta, dict) else {}


def load_into(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load weights saved by `save` (tied parameters were stored once).

    Weights that do not fit the model (a conditions.toml edited after growth, weights from
    another run) are a one-line SeedbedError naming the first mismatch, not a traceback.
    """
    full = dict(weights)
    expected = model.state_dict()
    for name, t in expected.items():
        if name not in full:  # a tied duplicate: find the tensor it shares memory with
            twin = next((n for n, u in expected.items() if u.data_ptr() == t.data_ptr() and n in weights), None)
            if twin is None:
                raise SeedbedError(f"the checkpoint has no weights for '{name}': it was not grown under this run's conditions.toml")
            full[name] = weights[twin]
    unknown = sorted(set(full) - set(expected))
    if unknown:
        raise SeedbedError(f"the checkpoint holds '{unknown[0]}', which this run's conditions.toml has no place for: "
                           "the conditions were changed after growth; restore them")
    for name, t in expected.items():
        if tuple(full[name].shape) != tuple(t.shape) or full[name].dtype != t.dtype:
            raise SeedbedError(f"the checkpoint's '{name}' is {tuple(full[name].shape)} {full[name].dtype}, but this run's "
                               f"conditions.toml makes it {tuple(t.shape)} {t.dtype}: the conditions were changed after growth; restore them")
    model.load_state_dict(full)


def newest_valid(run: Run, with_state: bool = True, say=print) -> Loaded | None:
    """The newest checkpoint whose hashes verify; corrupt ones are set aside (renamed, not deleted)."""
    for rec in reversed(run.checkpoints()):
        try:
            return load(run, rec, with_state)
        except CorruptCheckpoint as why:
            say(f"checkpoint at step {rec.step} is corrupt ({why}): falling back to the previous one")
            run.log_event(rec.step, "corrupt-checkpoint", str(why))
            set_aside(run, rec.step)
            run.forget_checkpoint(rec.step)
    return None


def set_aside(run: Run, step: int) -> None:
    """Rename the files of the checkpoint at `step` to `*.corrupt`: in checkpoints/ only, whatever run.sqlite says."""
    prefix = f"step-{int(step):06d}."
    with contained.folder(run.path, "checkpoints") as fd:
        for name in os.listdir(fd):
            if name.startswith(prefix) and not name.endswith(".corrupt") and not contained.is_dir_in(fd, name):
                os.rename(name, name + ".corrupt", src_dir_fd=fd, dst_dir_fd=fd)  # a link is renamed, not followed
