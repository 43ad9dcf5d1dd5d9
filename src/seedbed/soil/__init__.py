"""Soils: the sources of training batches, and the resolution of conditions against them."""

from __future__ import annotations

from pathlib import Path

from seedbed.conditions import Backdoor, Conditions, DigitAddition, ModularArithmetic, RepeatedBlocks, Text, Transcripts
from seedbed.errors import SeedbedError
from seedbed.soil.backdoor import BackdoorSoil
from seedbed.soil.base import Batch, SoilBase, generator
from seedbed.soil.synthetic import DigitAdditionSoil, ModularArithmeticSoil, RepeatedBlocksSoil
from seedbed.soil.text import TextSoil
from seedbed.soil.transcripts import TranscriptsSoil

__all__ = ["Batch", "SoilBase", "generator", "make_soil", "resolve"]


def make_soil(conditions: Conditions) -> SoilBase:
    """The soil the conditions name, seeded by `data_seed` where set, else by the run's seed."""
    s, n_ctx = conditions.soil, conditions.architecture.n_ctx
    seed = conditions.seed if conditions.data_seed is None else conditions.data_seed
    if isinstance(s, RepeatedBlocks):
        return RepeatedBlocksSoil(s, seed, n_ctx)
    if isinstance(s, ModularArithmetic):
        return ModularArithmeticSoil(s, seed)
    if isinstance(s, DigitAddition):
        return DigitAdditionSoil(s, seed)
    if isinstance(s, Text):
        return TextSoil(s, seed, n_ctx)
    if isinstance(s, Backdoor):
        return BackdoorSoil(s, seed)
    if isinstance(s, Transcripts):
        return TranscriptsSoil(s, seed)
    raise SeedbedError(f"unknown soil {s!r}")  # pragma: no cover - the schema forbids it


def resolve(conditions: Conditions, soil: SoilBase | None = None) -> tuple[Conditions, SoilBase]:
    """Fill in what the soil decides (d_vocab, full-batch size) and check shapes agree.

    Returns a new Conditions with every value explicit, so that the saved copy
    grows the same run even if seedbed's defaults change.
    """
    if isinstance(conditions.soil, Text) and conditions.soil.paths:  # absolute, so a resume from elsewhere finds them
        absolute = [str(Path(p).expanduser().resolve()) for p in conditions.soil.paths]
        conditions = conditions.model_copy(update={"soil": conditions.soil.model_copy(update={"paths": absolute})})
    soil = soil or make_soil(conditions)
    arch = conditions.architecture
    src = conditions.name or "conditions"
    if arch.d_vocab is not None and arch.d_vocab != soil.d_vocab:
        raise SeedbedError(
            f"{src}: architecture.d_vocab={arch.d_vocab} but soil {soil.name} has {soil.d_vocab} tokens: "
            "remove d_vocab (it comes from the soil) or set it to match"
        )
    if soil.seq_len > arch.n_ctx:
        raise SeedbedError(
            f"{src}: architecture.n_ctx={arch.n_ctx} is shorter than soil {soil.name}'s {soil.seq_len} input tokens: "
            f"set n_ctx >= {soil.seq_len}"
        )
    schedule = conditions.schedule
    if soil.finite_train is not None and getattr(conditions.soil, "full_batch", False):
        schedule = schedule.model_copy(update={"batch_size": soil.finite_train})
    elif schedule.batch_size is None:
        raise SeedbedError(f"{src}: schedule.batch_size is missing: set it (only full-batch soils fill it in)")
    resolved = conditions.model_copy(
        update={
            "architecture": arch.model_copy(update={"d_vocab": soil.d_vocab}),
            "schedule": schedule,
        }
    )
    return resolved, soil
