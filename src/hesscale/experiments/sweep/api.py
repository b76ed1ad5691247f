"""Sweeps from Python: ``run_sweep(spec)`` does what ``hesscale sweep SPEC --jobs N`` does.

The spec may be a dict (the keys of a TOML spec); its tasks, networks and learners may be
registered from Python (``hesscale.experiments.register_task`` etc.). Runs in a process pool
(``jobs > 1``) or on SLURM import what they need by path, so register module-level functions
and classes (defined in a module, or in the main script under
``if __name__ == "__main__":`` guards); anything else runs with ``jobs=1`` only.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from typing import Any

from hesscale.experiments.sweep.plan import PlannedRun, check_runs, plan
from hesscale.experiments.sweep.spec import SpecError, check_spec, find_spec, load_spec


def prepare(
    spec: str | os.PathLike | dict[str, Any],
    *,
    out_dir: str | os.PathLike | None = None,
    learners: list[str] | None = None,
    data_dir: str | None = None,
    threads: int = 1,
    trial: bool = True,
) -> tuple[dict[str, Any], Path, dict[str, list[PlannedRun]]]:
    """(checked spec, output folder, runs per learner): everything checked, nothing written.
    ``spec``: a dict, a TOML file or a shipped spec's name; ``learners``: a subset to run."""
    if isinstance(spec, dict):
        checked = check_spec(spec, "spec")
    else:
        checked = load_spec(find_spec(str(spec)))
    if data_dir:
        checked["data_dir"] = data_dir
    if learners:
        missing = sorted(set(learners) - set(checked["learners"]))
        if missing:
            raise SpecError(f"learners {missing} are not in the spec.")
        checked["learners"] = {k: v for k, v in checked["learners"].items() if k in learners}
    folder = Path(out_dir or Path("results") / checked["name"])
    runs = plan(checked, folder, threads=threads)
    check_runs(runs, trial=trial)
    return checked, folder, runs


def local_only(runs: dict[str, list[PlannedRun]]) -> list[str]:
    """Components of ``runs`` that only this process knows (registered without import path)."""
    return sorted({name for rs in runs.values() for r in rs for name in r.local_only})


def run_sweep(
    spec: str | os.PathLike | dict[str, Any],
    *,
    out_dir: str | os.PathLike | None = None,
    jobs: int | None = 1,
    threads: int = 1,
    learners: list[str] | None = None,
    data_dir: str | None = None,
    progress: bool = False,
    command_prefix: str = "hesscale",
    slurm: dict[str, Any] | None = None,
) -> dict[str, list[PlannedRun]]:
    """Check ``spec``, write its command lists and SLURM scripts under ``out_dir`` (default
    results/<name>), then run its pending runs here, ``jobs`` at a time (None: run nothing).
    Returns the runs per learner (``plan.status_of`` tells where each stands). Raises
    ValueError (SpecError, ComponentError, ...) before writing anything if a run cannot run.
    """
    from hesscale.experiments.logs import is_complete
    from hesscale.experiments.sweep.local import run_local
    from hesscale.experiments.sweep.slurm import SLURM_DEFAULTS, write_files

    for option, value in (("jobs", jobs), ("threads", threads)):
        if value is not None and value < 1:
            raise SpecError(f"{option} must be at least 1, got {value}.")
    if jobs is not None and jobs > 1 and called_from_unguarded_script():
        raise SpecError(
            f"run_sweep(..., jobs={jobs}) starts worker processes that import your script "
            "again (Python's 'spawn' start method), and your script calls run_sweep at its top "
            "level, so every worker would start the sweep anew and fail. Put the call under "
            'if __name__ == "__main__": (or in a function called from there), or use jobs=1.'
        )
    checked, folder, runs = prepare(
        spec, out_dir=out_dir, learners=learners, data_dir=data_dir, threads=threads
    )
    only_here = local_only(runs)
    if only_here and jobs is not None and jobs > 1:
        raise SpecError(
            f"{', '.join(only_here)} cannot be imported by other processes (registered "
            "without an import path: a lambda, a function defined inside another, or an "
            "interactive session); run with jobs=1, or register a module-level function or "
            "class."
        )
    options = {**SLURM_DEFAULTS, **checked["slurm"], **(slurm or {})}
    options["cpus"] = options["cpus"] or threads
    write_files(checked, runs, folder, command_prefix, options)
    if jobs is not None:
        pending = [r for rs in runs.values() for r in rs if not is_complete(r.log)]
        run_local(pending, jobs, threads, progress)
    return runs


def called_from_unguarded_script() -> bool:
    """Whether the main script calls this from its top level, outside an
    ``if __name__ == "__main__":`` block (the workers of a process pool import the main script
    again, as ``__mp_main__``, and would run that call too)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if name in ("__main__", "__mp_main__") and frame.f_code.co_name == "<module>":
            path = frame.f_globals.get("__file__")
            return path is not None and not _inside_name_check(Path(path), frame.f_lineno)
        frame = frame.f_back
    return False


def _inside_name_check(script: Path, line: int) -> bool:
    """Whether ``line`` of ``script`` lies in a top-level ``if`` that tests ``__name__``
    (True when the script cannot be read: nothing to warn about)."""
    try:
        tree = ast.parse(script.read_text())
    except (OSError, SyntaxError, ValueError):
        return True
    for statement in tree.body:
        if statement.lineno <= line <= (statement.end_lineno or statement.lineno):
            return isinstance(statement, ast.If) and any(
                isinstance(node, ast.Name) and node.id == "__name__"
                for node in ast.walk(statement.test)
            )
    return True
