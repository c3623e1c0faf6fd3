"""Data parallelism over twins under torchrun: gloo on CPU, nccl on CUDA.

Every process holds the whole model and simulates its share of each batch (``indices[rank::world]``); the
gradients are summed over processes after each backward pass (each process scales its loss by its share of
the batch), so one step equals the single-process step on the whole batch up to float rounding. Outside
torchrun (no ``WORLD_SIZE`` > 1 in the environment) everything is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# torch.distributed.nn takes the group as a default argument (group=group.WORLD) when it is first imported, and
# torch.optim imports it; imported after the group exists, it would keep the group alive after teardown, gloo's
# threads would outlive it and a process could abort while the interpreter exits (SIGABRT)
import torch.distributed.nn


@dataclass(frozen=True)
class Dist:
    """This process's place: rank in 0 … world − 1."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that writes files and shows progress."""
        return self.rank == 0

    def shard(self, indices: list[int]) -> list[int]:
        return indices[self.rank::self.world]

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over processes (in place; missing gradients count as zero)."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of ``values`` over processes (a new tensor)."""
        if self.world == 1:
            return values
        out = values.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def setup(device: str | None = None) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when launched by torchrun; returns (Dist, this process's device).

    device: "cpu", "cuda" or None (CUDA when available); under torchrun CUDA processes take cuda:LOCAL_RANK.
    """
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), torch.device(name)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(name).type == "cuda"
    where = torch.device("cuda", local) if cuda else torch.device(name)
    if cuda:
        torch.cuda.set_device(where)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), where


def teardown() -> None:
    """Leave the process group (if any), together: a barrier first, so that no rank tears down its
    connections while another is still writing the bundle (gloo aborts a process whose peer vanished). The group is
    freed here and its threads joined (see ``setup``), not during the interpreter's exit."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
