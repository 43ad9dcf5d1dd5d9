"""Data parallel growth under torchrun: who this process is, and the one all-reduce a step needs.

Each rank takes its share of the same global batch; the loss is normalised by the *global*
number of loss tokens, so summing gradients over ranks gives exactly the gradient of the
single-process loss. A single process is rank 0 of 1, and every collective here is then a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor

from seedbed.errors import SeedbedError


@dataclass
class Distributed:
    """Who we are under torchrun (rank, world size); a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process started the process group, so it must end it

    @classmethod
    def from_env(cls, backend: str) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if backend == "nccl":  # one GPU per process, chosen before NCCL starts
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        owns = not torch_dist.is_initialized()
        if owns:
            torch_dist.init_process_group(backend)
        return cls(torch_dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")), owns)

    def close(self, together: bool) -> None:
        """End the process group this process started. Left to the interpreter's exit, gloo's threads can
        outlive it and abort the process ("terminate called without an active exception"), failing a
        finished run. `together`: every rank got here normally, so wait for the others first."""
        if not self.owns_group:
            return
        if together:
            torch_dist.barrier()
        torch_dist.destroy_process_group()
        self.owns_group = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()

    def share(self, obj: object) -> object:
        """Rank 0's value of `obj`, on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def rows(self, batch_size: int) -> slice:
        """This rank's contiguous share of the rows of a global batch."""
        share = torch.arange(batch_size).tensor_split(self.world)[self.rank]
        return slice(int(share[0]), int(share[-1]) + 1)


def backend_for(device: str) -> str:
    """nccl where the run asks for a GPU and one is there; gloo otherwise."""
    return "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"


def pick_device(want: str, dist: Distributed) -> torch.device:
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SeedbedError("device = \"cuda\" but no CUDA GPU is visible: set device = \"auto\" or \"cpu\"")
    return torch.device("cuda", dist.local_rank)


def all_reduce_grads(params: list[Tensor], dist: Distributed, extras: list[Tensor]) -> Tensor:
    """Sum gradients (and a few scalars) over ranks in one call; returns the summed scalars."""
    extra = torch.cat(extras)
    if dist.world == 1:
        return extra
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads] + [extra])
    torch_dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[offset:]


def rng_states(dist: Distributed, device: torch.device) -> list[Tensor]:
    """Every rank's CPU RNG state (index = rank); dropout is the only consumer. Collective."""
    mine = torch.get_rng_state()
    if dist.world == 1:
        return [mine]
    mine = mine.to(device)  # NCCL gathers GPU tensors only
    out: list[Tensor] = [torch.empty_like(mine) for _ in range(dist.world)]
    torch_dist.all_gather(out, mine)
    return [t.cpu() for t in out]
