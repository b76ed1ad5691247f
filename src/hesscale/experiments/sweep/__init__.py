"""``hesscale sweep SPEC``: a grid of runs from a TOML spec: command lists, SLURM, or local.

SPEC is a TOML file, or the name of a spec shipped with hesscale (``hesscale sweep --list``).
It writes, under the output folder (default ``results/<spec name>``):

  commands/<learner>.txt     one ``hesscale run ...`` command per line
  slurm/<learner>.sh         a SLURM job array over that list (sbatch it)
  slurm/submit_all.sh        sbatch for every learner
  logs/<learner>/<config>/seed_<s>.json   the run logs

``--jobs N`` also runs the pending commands here, N at a time. Sweeps resume: complete runs
(finished or diverged) are skipped, everything else runs again; failed runs are listed with
their traceback (``--status`` shows where a sweep stands without running anything).

A spec::

    name = "digits_small"          # output folder name
    task = "digits-label-permuted" # see hesscale.experiments.tasks
    network = "fc_relu_small"      # see hesscale.experiments.networks
    steps = 500
    batch_size = 16
    change_freq = 100              # permuted tasks only
    bin_size = 25
    # eval_every = 500             # test-split loss/accuracy every 500 steps (not digits)
    seeds = 3                      # 3 means [0, 1, 2]; or a list
    # hidden = [64, 32]            # fc networks: hidden sizes

    [learners.adam]                # every list is a grid axis; scalars are fixed
    lr = [1e-3, 1e-2]
    beta2 = 0.999

    [slurm]                        # defaults for the --time, --mem, ... options below
    time = "01:00:00"
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import shlex
import signal
import sys
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hesscale.experiments.logs import COMPLETE, is_complete, read_log, run_path

RUN_KEYS = {
    "task": str,
    "network": str,
    "steps": int,
    "batch_size": int,
    "change_freq": int,
    "bin_size": int,
    "eval_every": int,
    "hidden": list,
    "data_dir": str,
}
SPEC_KEYS = {"name", "description", "seeds", "learners", "slurm", *RUN_KEYS}
SLURM_DEFAULTS: dict[str, Any] = {
    "time": "03:00:00",
    "mem": "2G",
    "cpus": None,  # default: --threads
    "gpus": 0,
    "account": None,
    "partition": None,
    "env": [],
    "max_parallel": None,
    "signal_warning": 120,
    "requeue": True,
    "extra": [],
}


class SpecError(ValueError):
    """A sweep spec that cannot be run as written."""


@dataclass(frozen=True)
class PlannedRun:
    learner: str
    hyperparameters: dict[str, Any]
    seed: int
    log: Path
    argv: list[str]  # arguments of `hesscale`, starting with "run"


# specs ----------------------------------------------------------------------------------------


def shipped_specs() -> dict[str, Path]:
    folder = resources.files("hesscale.experiments") / "specs"
    return {
        Path(str(entry)).stem: Path(str(entry))
        for entry in folder.iterdir()
        if str(entry).endswith(".toml")
    }


def find_spec(spec: str) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    shipped = shipped_specs()
    if spec in shipped:
        return shipped[spec]
    raise SpecError(
        f"No spec file '{spec}', and no shipped spec of that name. Shipped specs: "
        f"{', '.join(sorted(shipped))}."
    )


def load_spec(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a spec; learners' hyperparameters are checked against their optimizers."""
    from hesscale.experiments.learners import LEARNERS, hyperparameter_names
    from hesscale.experiments.networks import NETWORKS
    from hesscale.experiments.tasks import parse_task_name

    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not valid TOML: {error}") from None
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SpecError(f"{path}: unknown keys {unknown}; known: {sorted(SPEC_KEYS)}.")
    for key in ("task", "network", "steps", "learners"):
        if key not in spec:
            raise SpecError(f"{path}: '{key}' is required.")
    for key, kind in RUN_KEYS.items():
        if key in spec and not isinstance(spec[key], kind):
            raise SpecError(f"{path}: '{key}' must be a {kind.__name__}, got {spec[key]!r}.")
    try:
        parse_task_name(spec["task"])
    except ValueError as error:
        raise SpecError(f"{path}: {error}") from None
    if spec["network"] not in NETWORKS:
        raise SpecError(f"{path}: unknown network '{spec['network']}'; known: {list(NETWORKS)}.")
    spec.setdefault("name", path.stem)
    seeds = spec.setdefault("seeds", 1)
    if isinstance(seeds, int):
        spec["seeds"] = list(range(seeds))
    if not spec["seeds"] or not all(isinstance(s, int) for s in spec["seeds"]):
        raise SpecError(f"{path}: 'seeds' must be a count or a list of integers.")
    if not isinstance(spec["learners"], dict) or not spec["learners"]:
        raise SpecError(f"{path}: [learners.<name>] tables are required.")
    for learner, grid in spec["learners"].items():
        if learner not in LEARNERS:
            raise SpecError(f"{path}: unknown learner '{learner}'; known: {list(LEARNERS)}.")
        if "lr" not in grid:
            raise SpecError(f"{path}: learner '{learner}' needs lr (a value or a list).")
        bad = sorted(set(grid) - set(hyperparameter_names(learner)))
        if bad:
            raise SpecError(
                f"{path}: learner '{learner}' has no hyperparameter {bad}; it accepts "
                f"{hyperparameter_names(learner)}."
            )
    slurm = spec.setdefault("slurm", {})
    bad = sorted(set(slurm) - set(SLURM_DEFAULTS))
    if bad:
        raise SpecError(f"{path}: unknown [slurm] keys {bad}; known: {sorted(SLURM_DEFAULTS)}.")
    return spec


def _grid(grid: dict[str, Any]) -> list[dict[str, Any]]:
    keys = sorted(grid, key=lambda k: (k != "lr", k))
    axes = [grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys]
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes)]


def plan(spec: dict[str, Any], out_dir: Path, threads: int = 1) -> dict[str, list[PlannedRun]]:
    """Every run of the spec, per learner, in a fixed order."""
    fixed = ["--task", spec["task"], "--network", spec["network"], "--steps", str(spec["steps"])]
    for key in ("batch_size", "change_freq", "bin_size", "eval_every", "data_dir"):
        if key in spec:
            fixed += ["--" + key.replace("_", "-"), str(spec[key])]
    if "hidden" in spec:
        fixed += ["--hidden", ",".join(map(str, spec["hidden"]))]
    fixed += ["--threads", str(threads), "--no-progress"]
    runs: dict[str, list[PlannedRun]] = {}
    for learner, grid in spec["learners"].items():
        runs[learner] = []
        for hyper in _grid(grid):
            hyper["lr"] = float(hyper["lr"])
            for seed in spec["seeds"]:
                log = (run_path(out_dir / "logs", learner, hyper, seed)).absolute()
                argv = ["run", "--learner", learner, "--lr", repr(float(hyper["lr"]))]
                argv += ["--seed", str(seed), *fixed]
                for key, value in hyper.items():
                    if key != "lr":
                        argv += ["--opt", f"{key}={value!r}"]
                argv += ["--out", str(log)]
                runs[learner].append(PlannedRun(learner, hyper, seed, log, argv))
    return runs


# files ----------------------------------------------------------------------------------------


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(0o755)


def slurm_script(
    name: str, learner: str, commands: Path, n_tasks: int, workdir: Path, options: dict[str, Any]
) -> str:
    """A SLURM job-array script: task i runs line i+1 of ``commands``."""
    out_dir = commands.parent.parent / "slurm" / "out"
    cpus = options["cpus"] or 1
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}-{learner}",
        f"#SBATCH --array=0-{n_tasks - 1}"
        + (f"%{options['max_parallel']}" if options["max_parallel"] else ""),
        f"#SBATCH --time={options['time']}",
        f"#SBATCH --mem={options['mem']}",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --output={out_dir}/{learner}_%A_%a.out",
        # the warning signal goes to this script (B:), which passes it on to the run
        f"#SBATCH --signal=B:USR1@{options['signal_warning']}",
    ]
    if options["gpus"]:
        lines.append(f"#SBATCH --gres=gpu:{options['gpus']}")
    if options["account"]:
        lines.append(f"#SBATCH --account={options['account']}")
    if options["partition"]:
        lines.append(f"#SBATCH --partition={options['partition']}")
    if options["requeue"]:
        lines.append("#SBATCH --requeue")
    lines += [f"#SBATCH {extra}" for extra in options["extra"]]
    lines += [
        "",
        f"# {n_tasks} runs of learner {learner}; array task i runs line i+1 of the command list.",
        "set -uo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        *options["env"],
        f"COMMANDS={shlex.quote(str(commands))}",
        "LINE=$(( ${SLURM_ARRAY_TASK_ID:?run this as a SLURM array task} + 1 ))",
        'COMMAND=$(sed -n "${LINE}p" "$COMMANDS")',
        'if [ -z "$COMMAND" ]; then',
        '    echo "no command on line $LINE of $COMMANDS" >&2',
        "    exit 2",
        "fi",
        'echo "array task $SLURM_ARRAY_TASK_ID: $COMMAND"',
        'eval "ARGV=($COMMAND)"',
        '"${ARGV[@]}" &',
        "CHILD=$!",
        "trap 'kill -USR1 \"$CHILD\" 2>/dev/null' USR1",
        "trap 'kill -TERM \"$CHILD\" 2>/dev/null' TERM",
        'wait "$CHILD"',
        "STATUS=$?",
        'while kill -0 "$CHILD" 2>/dev/null; do  # a trapped signal interrupted wait',
        '    wait "$CHILD"',
        "    STATUS=$?",
        "done",
    ]
    if options["requeue"]:
        lines += [
            'if [ "$STATUS" -eq 3 ]; then  # preempted (the log says so): back into the queue',
            '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
            "fi",
        ]
    lines += ['exit "$STATUS"', ""]
    return "\n".join(lines)


def write_files(
    spec: dict[str, Any],
    runs: dict[str, list[PlannedRun]],
    out_dir: Path,
    prefix: str,
    slurm: dict[str, Any],
) -> list[Path]:
    """Command lists, SLURM scripts and submit_all.sh; returns the SLURM scripts."""
    out_dir = out_dir.absolute()
    scripts = []
    for learner, learner_runs in runs.items():
        commands = out_dir / "commands" / f"{learner}.txt"
        _write(commands, "".join(f"{prefix} {shlex.join(r.argv)}\n" for r in learner_runs))
        script = out_dir / "slurm" / f"{learner}.sh"
        text = slurm_script(spec["name"], learner, commands, len(learner_runs), Path.cwd(), slurm)
        _write(script, text, executable=True)
        scripts.append(script)
    (out_dir / "slurm" / "out").mkdir(parents=True, exist_ok=True)
    submit = [
        "#!/bin/bash",
        "set -euo pipefail",
        *(f"sbatch {shlex.quote(str(s))}" for s in scripts),
    ]
    _write(out_dir / "slurm" / "submit_all.sh", "\n".join(submit) + "\n", executable=True)
    return scripts


# local execution ------------------------------------------------------------------------------


def _init_worker(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    import torch

    torch.set_num_threads(threads)


def _parse(argv: list[str]):
    """(RunConfig, log path) of a planned ``run`` command."""
    from hesscale.experiments import run as run_module

    parser = argparse.ArgumentParser()
    run_module.configure(parser)
    args = parser.parse_args(argv[1:])
    return run_module.config_from_args(args), args.out


def _execute(argv: list[str]) -> tuple[str, str, str | None]:
    """Run one planned command in this process; returns (log path, status, error)."""
    from hesscale.experiments.run import run_and_log

    config, out = _parse(argv)
    log = run_and_log(config, out, progress=False, command=["hesscale", *argv])
    return out, log["status"], log.get("error")


def check_stale(runs: dict[str, list[PlannedRun]]) -> None:
    """Raise StaleLogError if a complete log was made with settings other than the spec's."""
    from hesscale.experiments.run import check_existing

    for planned in (r for rs in runs.values() for r in rs):
        log = read_log(planned.log)
        if log is not None and log.get("status") in COMPLETE:
            check_existing(_parse(planned.argv)[0], log, planned.log)


def _terminate(executor: ProcessPoolExecutor) -> None:
    """Stop the workers now; runs in flight leave no log and run again on resume."""
    terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((executor._processes or {}).values()):  # private before 3.14
        process.terminate()


def run_local(pending: list[PlannedRun], jobs: int, threads: int, progress: bool) -> bool:
    """Run ``pending`` here, ``jobs`` at a time. Returns False if stopped early."""
    from tqdm import tqdm

    bar = tqdm(total=len(pending), desc="runs", unit="run", disable=not progress)

    def done(status: str) -> None:
        bar.update()
        bar.set_postfix_str(f"last: {status}")

    try:
        if jobs == 1:
            import torch

            torch.set_num_threads(threads)
            for planned in pending:
                done(_execute(planned.argv)[1])
            return True
        context = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)
        )
        try:
            futures = [executor.submit(_execute, planned.argv) for planned in pending]
            for future in as_completed(futures):
                done(future.result()[1])
        except KeyboardInterrupt:
            _terminate(executor)
            raise
        except BrokenProcessPool:
            print("\nA worker process died (out of memory?); run again to resume.", file=sys.stderr)
            return False
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        return True
    except KeyboardInterrupt:
        return False
    finally:
        bar.close()


# status ---------------------------------------------------------------------------------------


def status_of(runs: dict[str, list[PlannedRun]]) -> dict[str, list[tuple[PlannedRun, dict | None]]]:
    """Runs grouped by log status (``missing`` when there is no log yet)."""
    groups: dict[str, list[tuple[PlannedRun, dict | None]]] = {}
    for learner_runs in runs.values():
        for planned in learner_runs:
            log = read_log(planned.log)
            groups.setdefault(log["status"] if log else "missing", []).append((planned, log))
    return groups


def report(runs: dict[str, list[PlannedRun]], tracebacks: bool = True) -> str:
    groups = status_of(runs)
    total = sum(len(r) for r in runs.values())
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(groups.items()))
    lines = [f"{total} runs: {counts}"]
    if groups.get("preempted"):
        n = len(groups["preempted"])
        lines.append(f"{n} preempted run(s) will continue from their checkpoints on resume.")
    if groups.get("interrupted"):
        lines.append(f"{len(groups['interrupted'])} interrupted run(s) will run again on resume.")
    for planned, log in groups.get("failed", []):
        lines.append(f"FAILED {planned.log}: {log.get('error')}")
        if tracebacks:
            lines += ["    " + line for line in log.get("traceback", "").rstrip().splitlines()]
    return "\n".join(lines)


# command line ---------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split("\n", 1)[1]
    parser.add_argument("spec", nargs="?", help="spec file, or a shipped spec's name")
    parser.add_argument("--list", action="store_true", help="list the shipped specs")
    parser.add_argument("--out-dir", default=None, help="default: results/<spec name>")
    parser.add_argument("--jobs", type=int, default=None, help="run pending runs here, N at once")
    parser.add_argument("--status", action="store_true", help="only report where the sweep is")
    parser.add_argument("--learners", default=None, help="comma-separated subset of learners")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--data-dir", default=None, help="dataset folder for every run")
    parser.add_argument(
        "--command-prefix",
        default="hesscale",
        help="what starts the hesscale command in the lists (e.g. 'python -m hesscale.cli')",
    )
    parser.add_argument("--no-progress", action="store_true")
    slurm = parser.add_argument_group("SLURM (defaults from the spec's [slurm] table)")
    slurm.add_argument("--time", help="per run, e.g. 03:00:00")
    slurm.add_argument("--mem", help="per run, e.g. 2G")
    slurm.add_argument("--cpus", type=int, help="cpus per task (default: --threads)")
    slurm.add_argument("--gpus", type=int, help="GPUs per task")
    slurm.add_argument("--account")
    slurm.add_argument("--partition")
    slurm.add_argument(
        "--env",
        action="append",
        help="a line that sets up the environment, e.g. 'source ~/venv/bin/activate' (repeatable)",
    )
    slurm.add_argument("--max-parallel", type=int, help="most array tasks running at once")
    slurm.add_argument("--signal-warning", type=int, help="seconds of warning before the limit")
    slurm.add_argument("--no-requeue", dest="requeue", action="store_false", default=None)
    slurm.add_argument("--extra", action="append", help="another #SBATCH option (repeatable)")


def main(args: argparse.Namespace) -> int:
    if args.list or not args.spec:
        for name, path in sorted(shipped_specs().items()):
            print(f"{name:28s} {path}")
        return 0 if args.list else 2
    try:
        spec = load_spec(find_spec(args.spec))
        if args.data_dir:
            spec["data_dir"] = args.data_dir
        if args.learners:
            chosen = args.learners.split(",")
            missing = sorted(set(chosen) - set(spec["learners"]))
            if missing:
                raise SpecError(f"learners {missing} are not in the spec.")
            spec["learners"] = {k: v for k, v in spec["learners"].items() if k in chosen}
    except (SpecError, ValueError) as error:
        print(f"hesscale sweep: {error}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir or Path("results") / spec["name"])
    runs = plan(spec, out_dir, threads=args.threads)
    try:
        check_stale(runs)
    except ValueError as error:
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
    pending = [r for rs in runs.values() for r in rs if not is_complete(r.log)]
    print(
        f"{total - len(pending)} complete, skipped; running {len(pending)} with {args.jobs} job(s)"
    )
    finished = run_local(pending, max(1, args.jobs), args.threads, not args.no_progress)
    print(report(runs))
    if not finished:
        print("Stopped early: run the same command again to resume.", file=sys.stderr)
        return 130
    return 1 if status_of(runs).get("failed") else 0
