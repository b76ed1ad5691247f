"""Sweep specs: TOML files (or shipped ones, by name) read and checked before anything runs."""

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
}
SPEC_KEYS = {"name", "description", "seeds", "learners", "slurm", *RUN_KEYS}


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
    if not spec["seeds"] or not all(isinstance(s, int) and s >= 0 for s in spec["seeds"]):
        raise SpecError(f"{path}: 'seeds' must be a count or a list of integers >= 0.")
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
