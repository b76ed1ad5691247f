"""``hesscale sweep``: the command line of hesscale.experiments.sweep."""

from __future__ import annotations

import argparse
import shlex
import sys

from hesscale.experiments import sweep
from hesscale.experiments.logs import is_complete
from hesscale.experiments.sweep.api import prepare
from hesscale.experiments.sweep.plan import count_runs, report, status_of
from hesscale.experiments.sweep.slurm import SLURM_DEFAULTS, write_files
from hesscale.experiments.sweep.spec import SpecError, describe, shipped_specs

EXIT_INTERRUPTED = 130


def configure(parser: argparse.ArgumentParser) -> None:
    paragraphs = sweep.__doc__.split("\n", 1)[1].strip("\n").split("\n\n")
    # what a user needs, without the package's notes on its own modules
    parser.description = "\n\n".join(p for p in paragraphs if not p.startswith("Modules:"))
    parser.add_argument("spec", nargs="?", help="spec file, or a shipped spec's name")
    parser.add_argument(
        "--list", action="store_true", help="list the shipped specs: what each is, how many runs"
    )
    parser.add_argument("--out-dir", default=None, help="default: results/<spec name>")
    parser.add_argument(
        "--jobs", type=int, default=None, help="run the pending runs here, N at once"
    )
    parser.add_argument("--status", action="store_true", help="only report where the sweep is")
    parser.add_argument("--learners", default=None, help="comma-separated subset of learners")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--data-dir", default=None, help="dataset folder for every run")
    parser.add_argument(
        "--command-prefix",
        default="hesscale",
        help="what starts the hesscale command in the lists (e.g. 'python -m hesscale.cli')",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    slurm = parser.add_argument_group("SLURM (defaults from the spec's [slurm] table)")
    slurm.add_argument("--time", help="per run, e.g. 03:00:00")
    slurm.add_argument("--mem", help="per run, e.g. 2G")
    slurm.add_argument("--cpus", type=int, help="cpus per task (default: --threads)")
    slurm.add_argument("--gpus", type=int, help="GPUs per task")
    slurm.add_argument("--account", help="SLURM account to charge")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument(
        "--env",
        action="append",
        help="a line that sets up the environment, e.g. 'source ~/venv/bin/activate' (repeatable)",
    )
    slurm.add_argument("--max-parallel", type=int, help="most array tasks running at once")
    slurm.add_argument("--signal-warning", type=int, help="seconds of warning before the limit")
    slurm.add_argument(
        "--no-requeue",
        dest="requeue",
        action="store_false",
        default=None,
        help="a preempted run does not put itself back into the queue",
    )
    slurm.add_argument("--extra", action="append", help="another #SBATCH option (repeatable)")


def list_specs() -> str:
    """One line per shipped spec: name, number of runs, what it is."""
    lines = []
    for name, path in sorted(shipped_specs().items()):
        lines.append(f"{name:26} {count_runs(path):>5} runs  {describe(path)}")
    return "\n".join(lines)


def resume_command(args: argparse.Namespace) -> str:
    """The command that continues this sweep (complete runs are skipped)."""
    argv = ["hesscale", "sweep", args.spec]
    for option in ("out_dir", "learners", "data_dir"):
        if getattr(args, option):
            argv += ["--" + option.replace("_", "-"), str(getattr(args, option))]
    if args.threads != 1:
        argv += ["--threads", str(args.threads)]
    return shlex.join([*argv, "--jobs", str(args.jobs)])


def main(args: argparse.Namespace) -> int:
    if args.list or not args.spec:
        print(list_specs())
        if not args.list:
            message = "name a spec: one of the above, or a TOML file"
            print(f"\nhesscale sweep: {message}", file=sys.stderr)
        return 0 if args.list else 2
    try:
        for option in ("jobs", "threads"):
            value = getattr(args, option)
            if value is not None and value < 1:
                raise SpecError(f"--{option} must be at least 1, got {value}.")
        spec, out_dir, runs = prepare(
            args.spec,
            out_dir=args.out_dir,
            learners=args.learners.split(",") if args.learners else None,
            data_dir=args.data_dir,
            threads=args.threads,
            trial=not args.status,
        )
    except ValueError as error:  # SpecError, a run's settings, or a log of other settings
        print(f"hesscale sweep: {error}", file=sys.stderr)
        return 2
    if args.status:
        print(report(runs))
        return 0
    slurm = {**SLURM_DEFAULTS, **spec["slurm"]}
    for key in SLURM_DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            slurm[key] = value
    slurm["cpus"] = slurm["cpus"] or args.threads
    scripts = write_files(spec, runs, out_dir, args.command_prefix, slurm)
    total = sum(len(r) for r in runs.values())
    print(f"{total} runs in {out_dir / 'commands'}; SLURM: {out_dir / 'slurm' / 'submit_all.sh'}")
    if args.jobs is None:
        print(report(runs, tracebacks=False))
        print(
            f"Run them here with --jobs N, or submit with: bash {scripts[0].parent}/submit_all.sh"
        )
        return 0
    from hesscale.experiments.sweep.local import run_local

    pending = [r for rs in runs.values() for r in rs if not is_complete(r.log)]
    print(
        f"{total - len(pending)} complete, skipped; running {len(pending)} with {args.jobs} job(s)"
    )
    finished = run_local(pending, args.jobs, args.threads, not args.no_progress)
    print(report(runs))
    if not finished:
        print(
            "\nStopped early (Ctrl-C, or a worker died). To resume, run the same command again: "
            "complete runs are skipped, the others run again:\n"
            f"    {resume_command(args)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 1 if status_of(runs).get("failed") else 0
