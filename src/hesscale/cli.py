"""The ``hesscale`` command: argument parsing only; the work happens in hesscale.experiments.

Each subcommand lives in a module that defines ``configure(parser)`` (add its arguments) and
``main(args) -> int | None``; modules are imported only when their subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "approx-quality": (
        "hesscale.experiments.approx_quality",
        "how close each diagonal estimate is to the exact Hessian diagonal",
    ),
    "cost": ("hesscale.experiments.cost", "time and memory of each method vs. plain backprop"),
    "run": ("hesscale.experiments.run", "one training run: task x network x learner x seed"),
    "sweep": ("hesscale.experiments.sweep", "a grid of runs: command lists, SLURM, or local"),
    "plot": ("hesscale.experiments.plot", "learning curves and step-size sensitivity"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hesscale", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.configure(sub_parser)
        sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = getattr(args, "_module", None)
    if module is None:
        print(f"hesscale {args.command}: not available in this version", file=sys.stderr)
        return 2
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
