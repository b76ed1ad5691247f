"""What averaging the diagonals over ranks costs under DistributedDataParallel, next to DDP's own
gradient all-reduce: 2 CPU processes (gloo), one thread each.

    python benchmarks/ddp_overhead.py                  # MLP 784-512-512-10 tanh, batch 128/rank
    python benchmarks/ddp_overhead.py --width 1024 --repeats 50

Per step, medians over interleaved rounds on rank 0 (CPU clock of the process):
  local            forward + loss.backward() of the plain model (no DDP)
  ddp              the same under DDP (the difference: DDP's gradient all-reduce and hooks)
  ddp+hesscale     forward under DDP + hesscale.backward (its all-reduce of the diagonals
                   included)
  diagonal sync    hesscale's all-reduce of the diagonals alone
                   (hesscale.engine.distributed.average_over_ranks on the finished diagonals)
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import hesscale
from hesscale.engine import distributed


def worker(rank: int, world: int, store: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    times = measure(args)
    if rank == 0:
        report(times, world, args)
    gc.collect()  # the DDP module goes before its process group does
    dist.barrier()
    dist.destroy_process_group()


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(784, args.width), nn.Tanh(), nn.Linear(args.width, args.width), nn.Tanh(),
        nn.Linear(args.width, 10),
    )  # fmt: skip
    local, model = net, DDP(nn.Sequential(*[m for m in net]))
    x, y = torch.randn(args.batch, 784), torch.randint(0, 10, (args.batch,))

    def step_local():
        local.zero_grad(set_to_none=True)
        F.cross_entropy(local(x), y).backward()

    def step_ddp():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def step_hesscale():
        model.zero_grad(set_to_none=True)
        hesscale.backward(F.cross_entropy(model(x), y))

    def sync_only():
        distributed.average_over_ranks(list(model.parameters()), ["hesscale"])

    steps = {"local": step_local, "ddp": step_ddp, "ddp+hesscale": step_hesscale,
             "diagonal sync": sync_only}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(3):
        for fn in steps.values():
            fn()
    for r in range(args.repeats):
        order = list(steps)[r % len(steps) :] + list(steps)[: r % len(steps)]
        for name in order:
            dist.barrier()
            start = time.process_time()
            steps[name]()
            times[name].append(time.process_time() - start)
    return times


def report(times: dict[str, list[float]], world: int, args: argparse.Namespace) -> None:
    median = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    print(f"MLP 784-{args.width}-{args.width}-10, batch {args.batch} per rank, {world} ranks")
    for name, ms in median.items():
        print(f"  {name:<14} {ms:7.2f} ms")
    grad_sync = median["ddp"] - median["local"]
    print(f"  DDP's gradient synchronisation: {grad_sync:.2f} ms per step (ddp - local)")
    print(f"  diagonal synchronisation / gradient synchronisation: "
          f"{median['diagonal sync'] / grad_sync:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "store")
        mp.spawn(worker, args=(2, store, args), nprocs=2, join=True)


if __name__ == "__main__":
    main()
