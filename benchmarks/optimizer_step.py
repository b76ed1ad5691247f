"""Cost of one optimizer step (``opt.step()`` alone, after a backward pass) on the char-level
GPT: AdaHesScale, AdaHesScaleGN and SophiaGN (multi-tensor ``foreach`` path, and the
per-parameter loop) beside torch.optim.Adam(foreach=True), in one process, one thread, rounds
interleaved in rotating order; median time per step and its ratio to Adam's. ``--clock cpu``
(the default) counts this thread's CPU time (``time.thread_time``), which other processes on a
shared machine do not inflate (a step preempted for a 30 ms time slice would otherwise
dominate); ``--clock wall`` the elapsed time.

python benchmarks/optimizer_step.py                 # GPT 2 layers, width 64 (the study's)
python benchmarks/optimizer_step.py --width 128 --repeats 300
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import hesscale
from hesscale.experiments.tasks import TaskSettings
from hesscale.experiments.text import CharGPT, char_text
from hesscale.optim import AdaHesScale, AdaHesScaleGN, SophiaGN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = char_text(TaskSettings("char_text", batch_size=16))
    model = CharGPT(task.input_shape, task.n_outputs, width=args.width, depth=args.depth)
    x, y = task.next_batch()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    hesscale.backward(loss, gn=True)  # fills p.grad and p.hesscale_gn
    makers = {
        "Adam(foreach=True)": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "AdaHesScale": lambda ps: AdaHesScale(ps, lr=1e-3),
        "AdaHesScaleGN": lambda ps: AdaHesScaleGN(ps, lr=1e-3),
        "AdaHesScale(variant='paper')": lambda ps: AdaHesScale(ps, lr=1e-3, variant="paper"),
        "AdaHesScale(foreach=False)": lambda ps: AdaHesScale(ps, lr=1e-3, foreach=False),
        "SophiaGN": lambda ps: SophiaGN(ps, lr=1e-3),
    }
    setups = {}
    for name, make in makers.items():
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]
        for p, q in zip(params, model.parameters(), strict=True):
            p.grad = q.grad.clone()
        opt = make(params)
        field = opt.savefield if hasattr(opt, "savefield") else None
        diagonals = {
            id(p): q.hesscale_gn.clone() for p, q in zip(params, model.parameters(), strict=True)
        }

        def prepare(params=params, field=field, diagonals=diagonals) -> None:
            if field is not None:  # a fresh diagonal object, as a backward pass leaves one
                for p in params:
                    setattr(p, field, diagonals[id(p)].view_as(p))

        prepare()
        opt.step()  # state allocated
        setups[name] = (prepare, opt.step)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in setups}
    names = list(setups)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            prepare, step = setups[name]
            prepare()  # not timed
            start = clock()
            step()
            times[name].append(clock() - start)
    base = statistics.median(times["Adam(foreach=True)"])
    n = sum(p.numel() for p in model.parameters())
    tensors = len(list(model.parameters()))
    print(
        f"GPT width {args.width} depth {args.depth}: {n} parameters in {tensors} tensors, "
        f"{args.repeats} rounds, {args.threads} thread(s), {args.clock} clock; "
        f"torch {torch.__version__}"
    )
    print(f"{'optimizer':32s} {'median step (us)':>17s} {'/ Adam':>7s}")
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:32s} {median * 1e6:17.0f} {median / base:7.2f}")


if __name__ == "__main__":
    main()
