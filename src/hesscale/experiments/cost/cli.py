"""``hesscale cost``: the command line of hesscale.experiments.cost."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hesscale.experiments.cost.measure import CLOCKS, TOO_SLOW, Config, Result, measure
from hesscale.experiments.cost.methods import METHODS
from hesscale.experiments.cost.models import ACTIVATIONS, MODELS
from hesscale.experiments.cost.report import format_table, write_outputs

DEFAULT_WIDTHS = {"mlp": [128, 256, 512, 1024], "cnn": [16, 32, 64], "resnet18": [64], "gpt": [128]}
DEFAULT_DEPTHS = {"mlp": [2], "cnn": [3], "resnet18": [18], "gpt": [2]}
DEFAULT_BATCH = {"mlp": 128, "cnn": 64, "resnet18": 16, "gpt": 4}


def configure(parser: argparse.ArgumentParser) -> None:
    from hesscale.experiments import cost

    parser.description = cost.__doc__
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="mlp",
        help="an MLP, a 3c3d-style CNN, torchvision's ResNet-18 (32x32 inputs) or a GPT "
        "(vocabulary 512, 64 tokens, 4 heads)",
    )
    parser.add_argument(
        "--widths",
        type=int,
        nargs="+",
        help="mlp: 128 256 512 1024; cnn: 16 32 64; gpt: 128 (model width); resnet18: fixed",
    )
    parser.add_argument(
        "--depths",
        type=int,
        nargs="+",
        help="hidden layers (mlp: 2), convolutions (cnn: 3) or blocks (gpt: 2)",
    )
    parser.add_argument(
        "--batch", type=int, help="mini-batch size (mlp: 128, cnn: 64, resnet18: 16, gpt: 4)"
    )
    parser.add_argument(
        "--activation", choices=sorted(ACTIVATIONS), help="mlp: tanh, cnn: relu (others fixed)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1],
        help="torch.set_num_threads values to sweep",
    )
    parser.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help="precision"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, which other processes "
        "on a shared machine disturb less (CPU device with 1 thread only)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        metavar="METHOD",
        help=f"default: all of {', '.join(METHODS)}",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method")
    parser.add_argument(
        "--max-step-seconds",
        type=float,
        default=3.0,
        help="skip a method whose first step takes longer (seconds)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument(
        "--out",
        type=Path,
        help="where cost.csv, cost.json, cost.txt and cost.png go (default: results/cost/MODEL; "
        "a folder that already holds results is refused unless --force)",
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite the results already in --out"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    counts = {"--widths": args.widths, "--depths": args.depths, "--threads": args.threads}
    counts |= {"--batch": [args.batch], "--repeats": [args.repeats], "--warmup": [args.warmup]}
    for option, values in counts.items():
        bad = [v for v in values or [] if v is not None and v < 1]
        if bad:
            print(f"hesscale cost: {option} must be at least 1, got {bad[0]}", file=sys.stderr)
            return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"hesscale cost: --device {args.device} was asked for but CUDA is not available "
            "here (torch.cuda.is_available() is False); nothing was measured. Run with "
            "--device cpu, or on a machine with a GPU.",
            file=sys.stderr,
        )
        return 1
    if args.device != "cpu" and not args.device.startswith("cuda"):
        print(
            f"hesscale cost: --device must be cpu or cuda[:N], got {args.device!r}", file=sys.stderr
        )
        return 2
    if args.clock == "cpu" and (args.device != "cpu" or args.threads != [1]):
        print(
            "hesscale cost: --clock cpu measures one CPU thread's work; use it only with "
            "--device cpu --threads 1",
            file=sys.stderr,
        )
        return 2
    out = args.out or Path("results/cost") / args.model
    if not args.force and (out / "cost.json").exists():
        print(
            f"hesscale cost: {out} already holds results; pass --out DIR to keep them, or "
            "--force to overwrite them.",
            file=sys.stderr,
        )
        return 2
    results: list[Result] = []
    try:
        _measure_all(args, results)
    except Exception as error:  # keep what was measured; one line, no traceback
        kept = f"; the {len(results)} results measured before it" if results else ""
        if results:
            write_outputs(results, out)
            kept += f" are in {out}"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(
            f"hesscale cost: stopped: {type(error).__name__}: {first_line}{kept}.",
            file=sys.stderr,
        )
        return 1 if results else 2
    for path in write_outputs(results, out):
        print(f"wrote {path}")
    return 0


def _measure_all(args: argparse.Namespace, results: list[Result]) -> None:
    """Measure every configuration the arguments ask for, appending to ``results`` as each
    block is done (so that a failure later keeps them)."""
    methods = args.methods or list(METHODS)
    for threads in args.threads:
        for depth in args.depths or DEFAULT_DEPTHS[args.model]:
            too_slow: set[str] = set()  # too slow at a smaller width: skip at larger ones
            for width in sorted(args.widths or DEFAULT_WIDTHS[args.model]):
                config = Config(
                    args.model,
                    width,
                    depth,
                    args.batch or DEFAULT_BATCH[args.model],
                    args.activation,
                    args.device,
                    threads,
                    args.dtype,
                    args.clock,
                )
                block = measure(
                    config,
                    [m for m in methods if m not in too_slow],
                    args.repeats,
                    args.warmup,
                    args.max_step_seconds,
                    not args.no_memory,
                    not args.quiet,
                )
                for name in too_slow:
                    block.append(Result(config, name, METHODS[name].group, TOO_SLOW))
                too_slow |= {r.method for r in block if r.status.startswith(TOO_SLOW)}
                print(format_table(block), flush=True)
                results += block
