"""hesscale.compile against torch.compile: the compiled diagonal step over the compiled plain
step, on the CPU.

For each model: ``torch.compile(model)`` with forward, loss and ``loss.backward()`` (plain), and
``hesscale.compile(fn, gn=...)`` (forward, loss, gradient and diagonal in one Inductor graph),
each compiled once (not timed), then timed in alternating order within every round; medians
over the rounds, and the ratio to plain. Also the eager steps (plain backward and
hesscale.backward), for reference.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/compile_cost.py --models mlp gpt resnet18
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import hesscale
from hesscale.experiments.cost.models import make_problem

SIZES = {  # (width, depth, batch)
    "mlp": (512, 2, 64),
    "resnet18": (64, 18, 16),
    "gpt": (128, 2, 8),
}


def methods(name: str) -> dict:
    width, depth, batch = SIZES[name]
    problem = make_problem(name, width, depth, batch)
    loss_fn = problem.loss()
    x, y = problem.x, problem.y
    models = {}

    def fresh():
        import copy

        return copy.deepcopy(problem.model)

    def clear(model):
        for p in model.parameters():
            p.grad = None
            for field in ("hesscale", "hesscale_gn"):
                if hasattr(p, field):
                    delattr(p, field)

    plain_model = fresh()
    compiled_model = torch.compile(plain_model)

    def compiled_plain():
        clear(plain_model)
        loss_fn(compiled_model(x), y).backward()

    out = {"torch.compile plain": compiled_plain}
    for gn, label in ((False, "hesscale.compile"), (True, "hesscale.compile gn")):
        model = models[label] = fresh()
        step = hesscale.compile(lambda x, y, model=model: loss_fn(model(x), y), gn=gn)

        def compiled_diagonal(step=step, model=model):
            clear(model)
            step(x, y)

        out[label] = compiled_diagonal
    eager_model = fresh()

    def eager_plain():
        clear(eager_model)
        loss_fn(eager_model(x), y).backward()

    def eager_diagonal():
        clear(eager_model)
        hesscale.backward(loss_fn(eager_model(x), y))

    out["eager plain"] = eager_plain
    out["eager hesscale.backward"] = eager_diagonal
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), medians of {args.rounds} rounds")
    print("| model | method | compile s | step ms | ratio to torch.compile plain |")
    print("|---|---|---|---|---|")
    for name in args.models:
        steps = methods(name)
        compile_time = {}
        for label, step in steps.items():  # first calls compile
            start = time.perf_counter()
            step()
            step()
            compile_time[label] = time.perf_counter() - start
        times = {label: [] for label in steps}
        order = list(steps)
        for r in range(args.rounds):
            for label in order[r % len(order) :] + order[: r % len(order)]:
                start = time.perf_counter()
                steps[label]()
                times[label].append(time.perf_counter() - start)
        base = statistics.median(times["torch.compile plain"])
        for label in steps:
            median = statistics.median(times[label])
            print(f"| {name} | {label} | {compile_time[label]:.0f} | {1000 * median:.1f} | "
                  f"{median / base:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
