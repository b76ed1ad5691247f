"""hesscale.backward on torchvision's ResNet-18 against plain forward + loss.backward().

Time: one step = forward, cross-entropy, backward (plain, or hesscale.backward with gn=False /
True); the methods alternate within every round (order rotating), medians over the rounds.
Peak memory: the tensor bytes resident before the step (parameters, buffers, batch) plus the
largest amount allocated beyond that during the step (torch's profiler on the CPU,
hesscale.experiments.cost.peak_step_bytes).

python benchmarks/engine_resnet18.py --threads 1 --batch 16 --size 32 --repeats 20 --clock cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

import hesscale
from hesscale.experiments.cost import peak_step_bytes


class Step:
    def __init__(self, model, x, y, method):
        self.model, self.x, self.y, self.method = model, x, y, method

    def reset(self):
        for p in self.model.parameters():
            p.grad = None
            for field in ("hesscale", "hesscale_gn"):
                if hasattr(p, field):
                    delattr(p, field)

    def run(self):
        self.reset()
        loss = F.cross_entropy(self.model(self.x), self.y)
        if self.method == "plain":
            loss.backward()
        else:
            hesscale.backward(loss, gn=self.method == "hesscale_gn")


def resident_bytes(model, x, y) -> int:
    tensors = [*model.parameters(), *model.buffers(), x, y]
    return sum(t.numel() * t.element_size() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--mode", choices=["train", "eval"], default="train")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the process's CPU time, which other processes on a shared machine disturb "
        "less (use with --threads 1)",
    )
    parser.add_argument("--methods", nargs="+", default=["plain", "hesscale", "hesscale_gn"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models.resnet18(num_classes=10), args.mode)()
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    steps = {m: Step(model, x, y, m) for m in args.methods}
    for step in steps.values():  # warm-up
        for _ in range(2):
            step.run()
    times = {m: [] for m in steps}
    names = list(steps)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    for round_ in range(args.repeats):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for m in order:
            start = clock()
            steps[m].run()
            times[m].append(clock() - start)
    resident = resident_bytes(model, x, y)
    peaks = {m: resident + peak_step_bytes(steps[m], "cpu") for m in steps}
    base_time, base_peak = statistics.median(times["plain"]), peaks["plain"]
    print(
        f"ResNet-18 ({args.mode} mode), {args.size}x{args.size}, batch {args.batch}, "
        f"{args.threads} thread(s), {args.repeats} rounds, {args.clock} clock"
    )
    print(f"{'method':<12} {'median ms':>10} {'time ratio':>10} {'peak MB':>9} {'mem ratio':>9}")
    for m in steps:
        median = statistics.median(times[m])
        print(
            f"{m:<12} {median * 1e3:>10.1f} {median / base_time:>10.2f} "
            f"{peaks[m] / 2**20:>9.1f} {peaks[m] / base_peak:>9.2f}"
        )


if __name__ == "__main__":
    main()
