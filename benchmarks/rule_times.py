"""Where the time of hesscale.backward goes on a model of the cost study: the time inside each
kind of rule per step, beside plain forward+backward and the whole HesScale step (one CPU
thread, the process's CPU time).

    python benchmarks/rule_times.py --model gpt
    python benchmarks/rule_times.py --model mlp --width 512 --gn

Rounds alternate plain forward+backward and hesscale.backward with a timer around every rule
(medians over the rounds; per rule, the median of its total per step). "Engine and the rest"
is the HesScale step minus plain forward+backward minus the rules, all from the same rounds:
the engine's bookkeeping (hooks, the graph walk, the check of summed gradients, writing the
results) and the cache misses of a second pass over the same activations. The timers cost
about 3 microseconds per rule (two clock reads of about 1.1 us each), under 1% of a step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator

import torch

import hesscale
from hesscale.engine.registry import RULES
from hesscale.experiments.cost.cli import DEFAULT_BATCH, DEFAULT_DEPTHS, DEFAULT_WIDTHS
from hesscale.experiments.cost.models import MODELS, make_problem


@contextlib.contextmanager
def timed_rules() -> Iterator[dict[str, float]]:
    """While active, every rule of the registry adds its CPU time to ``totals[node name]``."""
    totals: dict[str, float] = defaultdict(float)
    originals = dict(RULES)

    def timed(name, rule):
        def run(call):
            start = time.process_time()
            try:
                return rule(call)
            finally:
                totals[name] += time.process_time() - start

        return run

    for name, entry in originals.items():
        RULES[name] = dataclasses.replace(entry, rule=timed(name, entry.rule))
    try:
        yield totals
    finally:
        RULES.update(originals)


def measure(model: str, width: int, depth: int, batch: int, gn: bool, rounds: int) -> dict:
    """Median CPU ms of plain forward+backward and of the HesScale step, and the median CPU ms
    per step inside each kind of rule, from the same interleaved rounds."""
    problem = make_problem(model, width, depth, batch)
    net, x, y, loss_fn = problem.model, problem.x, problem.y, problem.loss()

    def plain():
        net.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()

    def diagonal():
        net.zero_grad(set_to_none=True)
        hesscale.backward(loss_fn(net(x), y), gn=gn)

    steps: dict = {plain: [], diagonal: []}
    per_rule: dict[str, list[float]] = defaultdict(list)
    with timed_rules() as totals:
        for step in (plain, diagonal, plain, diagonal):  # warm-up
            step()
        for r in range(rounds):
            totals.clear()
            for step in (plain, diagonal) if r % 2 == 0 else (diagonal, plain):
                start = time.process_time()
                step()
                steps[step].append(time.process_time() - start)
            for name, seconds in totals.items():
                per_rule[name].append(seconds)
    return {
        "plain": statistics.median(steps[plain]) * 1e3,
        "hesscale": statistics.median(steps[diagonal]) * 1e3,
        "rules": {name: statistics.median(s) * 1e3 for name, s in per_rule.items()},
    }


def parts(result: dict) -> list[tuple[str, float]]:
    """(label, ms) for plain forward+backward, the HesScale step, each kind of rule (slowest
    first) and the engine and the rest (the step minus plain minus the rules)."""
    plain, rules = result["plain"], result["rules"]
    rest = result["hesscale"] - plain - sum(rules.values())
    rows = [("plain forward+backward", plain), ("HesScale step", result["hesscale"])]
    rows += [(f"  rule {name}", ms) for name, ms in sorted(rules.items(), key=lambda kv: -kv[1])]
    return rows + [("  engine and the rest", rest)]


def table(result: dict) -> str:
    """The parts of one step, in ms and as a share of plain forward+backward."""
    rows, plain = parts(result), result["plain"]
    width = max(len(label) for label, _ in rows)
    lines = [f"{'part':{width}s}  {'ms':>7s}  {'x plain':>7s}"]
    lines += [f"{label:{width}s}  {ms:7.2f}  {ms / plain:7.2f}" for label, ms in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt")
    parser.add_argument("--width", type=int, help="default: the cost study's first width")
    parser.add_argument("--depth", type=int, help="default: the cost study's")
    parser.add_argument("--batch", type=int, help="default: the cost study's")
    parser.add_argument("--gn", action="store_true", help="HesScaleGN instead of HesScale")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    width = args.width or DEFAULT_WIDTHS[args.model][0]
    depth = args.depth or DEFAULT_DEPTHS[args.model][0]
    batch = args.batch or DEFAULT_BATCH[args.model]
    result = measure(args.model, width, depth, batch, args.gn, args.rounds)
    variant = "HesScaleGN" if args.gn else "HesScale"
    print(f"{args.model} width={width} depth={depth} batch={batch}, {variant}, 1 thread, CPU time")
    print(table(result))


if __name__ == "__main__":
    main()
