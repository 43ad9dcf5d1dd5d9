"""The growing state to and from checkpoints: what growth saves, and how a resume takes it back.

A checkpoint holds the weights and, beside them, what resuming needs: the optimiser, every
rank's RNG state and the step (the data cursor and the learning rate are functions of the step).
Saving and gathering the RNG states are collective: every rank calls them, rank 0 writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from seedbed import checkpoint
from seedbed.distributed import Distributed, rng_states
from seedbed.errors import SeedbedError
from seedbed.run import Run


def state(opt: torch.optim.Optimizer, step: int, dist: Distributed, device: torch.device) -> dict:
    """What resuming needs besides the weights. Collective: every rank takes part."""
    return {
        "step": step,
        "cursor": step,  # one global batch per step
        # (the learning-rate schedule is a pure function of the step: the step is its whole state)
        "optimizer": opt.state_dict(),
        "rng": rng_states(dist, device),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def save(run: Run | None, model: nn.Module, opt: torch.optim.Optimizer, step: int, tokens_per_step: int, dist: Distributed) -> None:
    """Checkpoint `step`: every rank gives its RNG state, rank 0 (the one holding `run`) writes."""
    saved = state(opt, step, dist, next(model.parameters()).device)
    if run is not None:
        checkpoint.save(run, model, step, step * tokens_per_step, saved)


def restore(run: Run | None, run_path: Path, model: nn.Module, opt: torch.optim.Optimizer, dist: Distributed, total: int,
            say: Callable[[str], None]) -> int | None:
    """Load the newest checkpoint that verifies; returns its step, or None if the run is complete.

    Rank 0 (holding `run`) chooses the checkpoint, setting corrupt ones aside; the other ranks read the same one.
    """
    if dist.main:
        assert run is not None
        run.remove_partial_writes()  # the remains of a write that a crash cut short
        loaded = checkpoint.newest_valid(run, say=lambda m: say(f"[yellow]{m}"))
        step = loaded.record.step if loaded else -1
    step = dist.share(step if dist.main else None)
    if not dist.main and step >= 0:
        reader = Run.open(run_path, readonly=True)
        loaded = checkpoint.load(reader, next(r for r in reader.checkpoints() if r.step == step))
        reader.close()
    if step < 0:
        raise SeedbedError(f"run '{run_path}' has no checkpoint that verifies: grow it again from its conditions.toml under a new --name")
    checkpoint.load_into(model, loaded.weights)
    saved = loaded.state
    opt.load_state_dict(saved["optimizer"])
    rngs = saved["rng"]
    torch.set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
    if saved["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    if step >= total:
        say(f"run '{run_path}' is already complete at step {step:,}: nothing to do")
        return None
    if dist.main:
        assert run is not None
        run.forget_after(step)
        run.log_event(step, "resume", f"resumed from step {step}")
        say(f"resuming {run.name} from step {step:,}")
    return step
