"""Data-parallel runs: ``hesscale run`` launched by ``torchrun`` (e.g. one multi-process run per
SLURM array task: ``torchrun --nproc-per-node 2 -m hesscale run ...``).

Every rank draws the same mini-batch from the same seeded stream and trains on its own
contiguous share of it; DistributedDataParallel averages the gradients and hesscale the
diagonals over the ranks, so with a mean-reduced loss each step equals a single-process step on
the whole batch (for networks without batch statistics). The logged loss and accuracy are those
of the whole batch. Rank 0 writes the log and the checkpoint; every rank reads the checkpoint to
continue a preempted run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int

    @property
    def writes(self) -> bool:
        return self.rank == 0


def from_environment() -> Ranks | None:
    """The ranks torchrun announced (RANK, WORLD_SIZE, LOCAL_RANK), or None for a single
    process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (gloo on the CPU, NCCL on GPUs); this rank's device."""
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, rank=ranks.rank, world_size=ranks.world)
    return device


def finish() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def share(batch: Tensor, ranks: Ranks) -> Tensor:
    """This rank's contiguous share of a mini-batch (its size divides by the world size)."""
    return batch.tensor_split(ranks.world)[ranks.rank]


def sums(*values: float) -> list[float]:
    """The sums over the ranks of these numbers (one all-reduce)."""
    totals = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(totals)
    return totals.tolist()
