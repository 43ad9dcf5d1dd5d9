"""A child run: growth that starts from a parent run's checkpoint instead of the seed.

`[init] from = "runs/NAME"` names the parent. Its folder is untrusted input like any run folder:
it is opened read-only, its checkpoint is read through `checkpoint.load` (inside the folder, regular
files only, sizes checked, tensors only) and must match the sha256 the parent recorded for it.
Nothing is written, here or there: a parent that is not a run, a step without a checkpoint, a
hash that does not match or an architecture that differs is one line, before the child's folder
exists. The child's conditions then record which checkpoint it grew from (`step`, `sha256`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from seedbed import checkpoint
from seedbed.conditions import Conditions, Init, Train
from seedbed.errors import SeedbedError
from seedbed.run import CheckpointRecord, Run

# Architecture fields a child may set its own way: they change how it trains, not what its weights mean.
FREE_FIELDS = ("dropout", "init")


@dataclass
class Parent:
    """The verified checkpoint a child starts from."""

    path: str  # as [init] from gives it
    step: int
    sha256: str
    weights: dict[str, Tensor]
    train: Train  # what the parent trained: its optimizer state is indexed by those parameters
    optimizer: dict[str, Any] | None  # the parent's optimizer state, for keep_optimizer
    skipped: list[str] = field(default_factory=list)  # newer checkpoints that did not verify, and why


def find_parent(cond: Conditions) -> tuple[Conditions, Parent]:
    """The parent checkpoint `cond.init` names, verified, and `cond` with its step and sha256 filled in."""
    init = cond.init
    assert init is not None
    where = f'[init] from = "{init.from_}"'
    path = Path(init.from_)
    if not (path / "run.sqlite").is_file() or not (path / "conditions.toml").is_file():
        raise SeedbedError(f"{where}: not a run folder (no run.sqlite / conditions.toml): give a grown run's folder (seedbed runs lists them)")
    try:
        reader = Run.open(path, readonly=True)
        try:
            parent_cond = reader.conditions
            same_architecture(cond, parent_cond, where, init.from_)
            rec, loaded, skipped = _checkpoint(reader, init, where)
        finally:
            reader.close()
    except SeedbedError as err:
        text = str(err)
        raise SeedbedError(text if text.startswith(where) else f"{where}: {text}") from None
    if init.sha256 is not None and init.sha256 != rec.sha256:
        raise SeedbedError(
            f"{where}: its checkpoint at step {rec.step} has sha256 {rec.sha256[:12]}…, not the {init.sha256[:12]}… these "
            "conditions record: the parent changed since; remove sha256 from [init] to grow from what it holds now"
        )
    state = loaded.state["optimizer"] if init.keep_optimizer and loaded.state is not None else None
    parent = Parent(init.from_, rec.step, rec.sha256, loaded.weights, parent_cond.train, state, skipped)
    filled = init.model_copy(update={"step": rec.step, "sha256": rec.sha256})
    return cond.model_copy(update={"init": filled}), parent


def same_architecture(child: Conditions, parent: Conditions, where: str, parent_path: str) -> None:
    """A child's weights are its parent's, so every field that shapes them must be the parent's."""
    mine, theirs = child.architecture.model_dump(), parent.architecture.model_dump()
    for key, value in mine.items():
        if key not in FREE_FIELDS and theirs.get(key) != value:
            origin = " (it comes from the soil's vocabulary)" if key == "d_vocab" else ""
            raise SeedbedError(
                f"{where}: architecture.{key} is {value} here but {theirs.get(key)} in the parent{origin}: a child keeps its "
                f"parent's architecture; copy [architecture] from {parent_path}/conditions.toml"
            )


def _checkpoint(reader: Run, init: Init, where: str) -> tuple[CheckpointRecord, checkpoint.Loaded, list[str]]:
    """The checkpoint at `init.step`, or the newest that verifies; corrupt ones are skipped, never touched."""
    records = reader.checkpoints()
    if not records:
        raise SeedbedError(f"{where}: the parent has no checkpoint yet: grow it first")
    if init.step is not None:
        rec = next((r for r in records if r.step == init.step), None)
        if rec is None:
            steps = ", ".join(str(r.step) for r in records[-12:])
            raise SeedbedError(f"{where}: the parent has no checkpoint at step {init.step}: steps with one are {steps}")
        try:
            return rec, checkpoint.load(reader, rec, with_state=init.keep_optimizer), []
        except checkpoint.CorruptCheckpoint as why:
            raise SeedbedError(f"{where}: its checkpoint at step {rec.step} cannot be trusted: {why}") from None
    skipped = []
    for rec in reversed(records):
        try:
            return rec, checkpoint.load(reader, rec, with_state=init.keep_optimizer), skipped
        except checkpoint.CorruptCheckpoint as why:
            skipped.append(f"the parent's checkpoint at step {rec.step} does not verify ({why})")
    raise SeedbedError(f"{where}: none of the parent's checkpoints verifies ({skipped[0]}): restore the parent from a copy")
