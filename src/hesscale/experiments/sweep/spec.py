"""Sweep specs: TOML files (or shipped ones, by name, or dicts from Python) read and checked
before anything runs; their tasks, networks and learners may be your own (import paths are
searched in the spec's folder first, then the working directory and PYTHONPATH)."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from hesscale.experiments.sweep.slurm import SLURM_DEFAULTS

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
    "task_options": dict,
    "network_options": dict,
}
SPEC_KEYS = {"name", "description", "seeds", "learners", "slurm", *RUN_KEYS}
LEARNER_KEY = "learner"  # in a learner's table: what it is, if its name is not a learner


class SpecError(ValueError):
    """A sweep spec that cannot be run as written."""


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
    """Read and check a spec file (see ``check_spec``)."""
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not valid TOML: {error}") from None
    spec.setdefault("name", path.stem)
    return check_spec(spec, str(path), path.parent)


def check_spec(
    spec: dict[str, Any], where: str = "spec", base_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Check a spec (a TOML file's contents, or a dict from Python) and return it completed:
    seeds as a list, each learner's reference in ``learner_references``, ``base_dir`` (where
    its import paths are searched first: the spec's folder). Tasks, networks and learners are
    looked up (your own modules imported) and learners' hyperparameters checked against their
    optimizers."""
    from hesscale.experiments.learners import LEARNERS, hyperparameter_names
    from hesscale.experiments.networks import NETWORKS, check_network_options
    from hesscale.experiments.tasks import TASKS, check_task_options

    if not isinstance(spec.get("learners", {}), dict):
        raise SpecError(f"{where}: 'learners' must be tables [learners.<name>].")
    spec = {**spec, "learners": dict(spec.get("learners", {}))}
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown keys {unknown}; known: {sorted(SPEC_KEYS)}.")
    for key in ("name", "task", "network", "steps", "learners"):
        if key not in spec:
            raise SpecError(f"{where}: '{key}' is required.")
    for key, kind in RUN_KEYS.items():
        if key in spec and not isinstance(spec[key], kind):
            raise SpecError(f"{where}: '{key}' must be a {kind.__name__}, got {spec[key]!r}.")
    base = str(Path(base_dir if base_dir is not None else Path.cwd()).resolve())
    spec["base_dir"] = base
    try:
        task = TASKS.resolve(spec["task"], [base])
        check_task_options(task.value, f"task '{task.target}'", spec.get("task_options", {}))
        network = NETWORKS.resolve(spec["network"], [base])
        options = dict(spec.get("network_options", {}))
        if "hidden" in spec:
            options["hidden"] = tuple(spec["hidden"])
        check_network_options(network.value, f"network '{network.target}'", options)
    except ValueError as error:
        raise SpecError(f"{where}: {error}") from None
    seeds = spec.setdefault("seeds", 1)
    if isinstance(seeds, int):
        spec["seeds"] = list(range(seeds))
    if not spec["seeds"] or not all(isinstance(s, int) and s >= 0 for s in spec["seeds"]):
        raise SpecError(f"{where}: 'seeds' must be a count or a list of integers >= 0.")
    if not spec["learners"]:
        raise SpecError(f"{where}: [learners.<name>] tables are required.")
    spec["learner_references"] = {}
    for label, table in spec["learners"].items():
        if not isinstance(table, dict):
            raise SpecError(f"{where}: learners.{label} must be a table of hyperparameters.")
        grid = dict(table)
        reference = grid.pop(LEARNER_KEY, label)
        if not isinstance(reference, str):
            raise SpecError(f"{where}: learners.{label}.{LEARNER_KEY} must be a string.")
        if reference != label:
            reference = f"{label}={reference}"
        try:
            learner = LEARNERS.resolve(reference, [base])
        except ValueError as error:
            raise SpecError(
                f"{where}: {error} (in [learners.{label}]; a learner of your own: "
                f"{LEARNER_KEY} = 'package.module:Class' in its table)"
            ) from None
        if "lr" not in grid:
            raise SpecError(f"{where}: learner '{label}' needs lr (a value or a list).")
        accepted = hyperparameter_names(learner.value)
        bad = sorted(set(grid) - set(accepted))
        if bad:
            raise SpecError(
                f"{where}: learner '{label}' has no hyperparameter {bad}; it accepts {accepted}."
            )
        spec["learners"][label] = grid
        spec["learner_references"][label] = reference
    slurm = spec.setdefault("slurm", {})
    bad = sorted(set(slurm) - set(SLURM_DEFAULTS))
    if bad:
        raise SpecError(f"{where}: unknown [slurm] keys {bad}; known: {sorted(SLURM_DEFAULTS)}.")
    return spec


def describe(path: Path) -> str:
    """A spec's one-line description: its ``description`` key, else its first comment line."""
    text = path.read_text()
    try:
        description = tomllib.loads(text).get("description")
    except tomllib.TOMLDecodeError:
        description = None
    if isinstance(description, str) and description.strip():
        return description.strip()
    comments = (line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#"))
    return next(comments, "")
