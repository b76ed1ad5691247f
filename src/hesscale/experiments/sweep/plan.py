"""A spec's runs: one ``hesscale run`` command per learner configuration and seed, in a fixed
order; their settings checked, and where each stands (from its log).

Each command names its components so that it runs anywhere: your modules by import path with
the folder they came from as ``--pythonpath``, files by absolute path, components registered
from Python by the import path of their object (``label=module:name``)."""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hesscale.experiments.logs import COMPLETE, read_log, run_path, safe_name
from hesscale.experiments.sweep.spec import LEARNER_KEY


@dataclass(frozen=True)
class PlannedRun:
    learner: str
    hyperparameters: dict[str, Any]
    seed: int
    log: Path
    argv: list[str]  # arguments of `hesscale`, starting with "run"
    local_only: tuple[str, ...] = ()  # components only this process knows (see plan)


def grid(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a learner table's values: each list is an axis, scalars fixed."""
    keys = sorted((k for k in table if k != LEARNER_KEY), key=lambda k: (k != "lr", k))
    axes = [table[k] if isinstance(table[k], list) else [table[k]] for k in keys]
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes)]


def _option_args(flag: str, options: dict[str, Any]) -> list[str]:
    return [arg for key, value in options.items() for arg in (flag, f"{key}={value!r}")]


def plan(spec: dict[str, Any], out_dir: Path, threads: int = 1) -> dict[str, list[PlannedRun]]:
    """Every run of a checked spec (``spec.check_spec``), per learner, in a fixed order.

    A component registered from Python without an import path (a lambda, say) is named by its
    bare name, which only this process knows: its runs list it in ``local_only``."""
    from hesscale.experiments.learners import LEARNERS
    from hesscale.experiments.networks import NETWORKS
    from hesscale.experiments.tasks import TASKS

    search = [spec.get("base_dir") or str(Path.cwd())]
    folders: list[str] = []
    local: list[str] = []

    def reference(registry, name: str) -> str:
        resolved = registry.resolve(name, search)
        text, origin = registry.command_reference(resolved)
        if origin is not None and origin not in folders:
            folders.append(origin)
        if registry.local_only(resolved):
            local.append(f"{registry.kind} '{resolved.target}'")
        return text

    task, network = reference(TASKS, spec["task"]), reference(NETWORKS, spec["network"])
    fixed = ["--task", task, "--network", network, "--steps", str(spec["steps"])]
    for key in ("batch_size", "change_freq", "bin_size", "eval_every", "data_dir"):
        if key in spec:
            fixed += ["--" + key.replace("_", "-"), str(spec[key])]
    if "hidden" in spec:
        fixed += ["--hidden", ",".join(map(str, spec["hidden"]))]
    fixed += _option_args("--task-opt", spec.get("task_options", {}))
    fixed += _option_args("--network-opt", spec.get("network_options", {}))
    fixed += ["--threads", str(threads), "--no-progress"]
    shared_folders, shared_local = list(folders), list(local)
    runs: dict[str, list[PlannedRun]] = {}
    for label, learner_grid in spec["learners"].items():
        folders[:], local[:] = list(shared_folders), list(shared_local)
        learner = reference(LEARNERS, spec.get("learner_references", {}).get(label, label))
        paths = [arg for folder in folders for arg in ("--pythonpath", folder)]
        runs[label] = []
        for hyper in grid(learner_grid):
            hyper["lr"] = float(hyper["lr"])
            for seed in spec["seeds"]:
                log = (run_path(out_dir / "logs", safe_name(label), hyper, seed)).absolute()
                argv = ["run", "--learner", learner, "--lr", repr(float(hyper["lr"]))]
                argv += ["--seed", str(seed), *fixed, *paths]
                for key, value in hyper.items():
                    if key != "lr":
                        argv += ["--opt", f"{key}={value!r}"]
                argv += ["--out", str(log)]
                runs[label].append(PlannedRun(label, hyper, seed, log, argv, tuple(local)))
    return runs


def count_runs(path: Path) -> int:
    """The number of runs of the spec at ``path``, from its grid alone (no checks, no imports)."""
    spec = tomllib.loads(path.read_text())
    seeds = spec.get("seeds", 1)
    n_seeds = seeds if isinstance(seeds, int) else len(seeds)
    return n_seeds * sum(len(grid(g)) for g in spec.get("learners", {}).values())


@functools.cache
def _run_parser() -> argparse.ArgumentParser:
    from hesscale.experiments import run as run_module

    parser = argparse.ArgumentParser()
    run_module.configure(parser)
    return parser


def parse_command(argv: list[str]):
    """(RunConfig, log path) of a planned ``run`` command."""
    from hesscale.experiments import run as run_module

    args = _run_parser().parse_args(argv[1:])
    return run_module.config_from_args(args), args.out


def check_runs(runs: dict[str, list[PlannedRun]], trial: bool = True) -> None:
    """Raise ValueError if a run's settings cannot run (``RunConfig.validate``, once per
    configuration: its seeds differ in nothing else), or if a complete log was made with
    settings other than the spec's (StaleLogError).

    With ``trial``, what only building can tell is checked too, once per learner, before any
    run starts: that your factories build a task and a network, and that a BackPACK learner
    gets a chain of modules (``run.trial_build``)."""
    from hesscale.experiments.run import check_existing, trial_build

    checked: set[str] = set()
    tried: set[str] = set()
    for planned in (r for rs in runs.values() for r in rs):
        key = json.dumps([planned.learner, planned.hyperparameters], sort_keys=True)
        log = read_log(planned.log)
        complete = log is not None and log.get("status") in COMPLETE
        if key in checked and not complete:
            continue
        config = parse_command(planned.argv)[0]
        if key not in checked:
            parts = config.validate()
            checked.add(key)
            if trial and planned.learner not in tried and _needs_trial(parts):
                trial_build(config)
                tried.add(planned.learner)
        if complete:
            check_existing(config, log, planned.log, elsewhere="--out-dir")


def _needs_trial(parts) -> bool:
    """Whether building can find a problem that checking the settings cannot: a factory of
    the user's (what does it build?) or a BackPACK learner (on a chain of modules?)."""
    from hesscale.experiments.networks import NETWORKS
    from hesscale.experiments.tasks import TASKS

    own = not TASKS.is_builtin(parts.task.target) or not NETWORKS.is_builtin(parts.network.target)
    return own or parts.learner.value.backward == "backpack"


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
