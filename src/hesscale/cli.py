"""The ``hesscale`` command: argument parsing only; the work happens in hesscale.experiments.

Each subcommand lives in a module that defines ``configure(parser)`` (add its arguments) and
``main(args) -> int | None``. Only the module of the subcommand being run is imported, so that
``hesscale --help`` does not load torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

DESCRIPTION = """\
Studies and experiments of hesscale: Hessian and Gauss-Newton diagonals (HesScale,
HesScaleGN) for PyTorch networks at about the cost of one extra backward pass, and the
optimizers that use them (AdaHesScale). The library itself is used from Python
(`import hesscale`); this command measures and compares it."""

EPILOG = """\
examples:
  hesscale approx-quality         how close each estimate is to the true diagonal (~2 min)
  hesscale run --task digits --network fc_tanh_small --learner adahesscale --lr 0.003
  hesscale sweep --list           the shipped sweeps, with their number of runs
  hesscale sweep digits_small --jobs 2 && hesscale plot results/digits_small
  hesscale run --task digits --network my_nets.py:net --learner torch.optim:RMSprop --lr 0.01
  hesscale cost --model mlp       time and memory of each method vs. plain backprop

Run `hesscale COMMAND --help` for the options of one command."""

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "approx-quality": (
        "hesscale.experiments.approx_quality",
        "how close each diagonal estimate is to the exact Hessian diagonal",
    ),
    "cost": ("hesscale.experiments.cost.cli", "time and memory of each method vs. plain backprop"),
    "run": ("hesscale.experiments.run", "one training run: task x network x learner x seed"),
    "sweep": ("hesscale.experiments.sweep.cli", "a grid of runs: here, or on a SLURM cluster"),
    "plot": ("hesscale.experiments.plot", "learning curves and step-size sensitivity of runs"),
}

# What the `experiments` extra installs (pip install "hesscale[experiments]"), by import name.
EXPERIMENTS_EXTRA = ("numpy", "tqdm", "matplotlib", "sklearn")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (reST ``code`` shown as `code`); each option's default appended
    where it says something (not for flags, options without a default, or help texts that
    state their default)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return super()._fill_text(text.replace("``", "`"), width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or action.nargs == 0
            or default in (None, argparse.SUPPRESS, [], ())
        ):
            return text
        if isinstance(default, list | tuple):
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


class _TopLevelFormatter(argparse.RawDescriptionHelpFormatter):
    """Room for the longest command name beside its help (argparse measures the commands'
    names too late to make room itself)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=92)
        self._action_max_length = 4 + max(map(len, SUBCOMMANDS))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its options."""
    from hesscale import __version__

    parser = argparse.ArgumentParser(
        prog="hesscale",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_TopLevelFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hesscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
        if name == command:
            module = importlib.import_module(module_name)
            module.configure(sub_parser)
            sub_parser.set_defaults(_module=module)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first argument that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _missing_extra(error: ModuleNotFoundError) -> str | None:
    """A message for a missing package of an extra (None for anything else)."""
    from hesscale.errors import MissingExtraError

    if isinstance(error, MissingExtraError):
        return str(error)  # names its extra (e.g. rl: gymnasium, mujoco)
    top = (error.name or "").split(".")[0]
    if top not in EXPERIMENTS_EXTRA:
        return None
    if str(error).startswith("hesscale.experiments needs"):
        return str(error)  # the package's own message names every missing one
    package = "scikit-learn" if top == "sklearn" else top
    return (
        f"this command needs {package}, which comes with hesscale's 'experiments' extra: "
        'pip install "hesscale[experiments]" (from a checkout: pip install -e ".[dev]")'
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    try:
        parser = build_parser(command if command in SUBCOMMANDS else None)
        if not argv:
            parser.print_help()
            return 0
        args = parser.parse_args(argv)
        module = getattr(args, "_module", None)
        if module is None:  # options but no command
            parser.print_help(sys.stderr)
            return 2
        return int(module.main(args) or 0)
    except ModuleNotFoundError as error:
        message = _missing_extra(error)
        if message is None:
            raise
        print(f"hesscale {command}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nhesscale {command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
