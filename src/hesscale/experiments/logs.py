"""Run logs: one JSON file per run, written atomically (temp file + os.replace).

``status`` is one of: ``finished``; ``diverged`` (the loss became NaN or infinite; the curve up
to that point is kept); ``preempted`` (stopped by SIGUSR1/SIGTERM, e.g. SLURM's warning signal:
to be run again); ``interrupted`` (Ctrl-C); ``failed`` (an exception; ``traceback`` holds it).
Finished and diverged runs are complete; a sweep runs every other one again.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

COMPLETE = ("finished", "diverged")
FORMAT_VERSION = 1


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` so that ``path`` holds either the old file or the whole new one.

    Non-finite floats become ``null`` (strict JSON).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_finite_or_none(data), f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_log(path: str | os.PathLike) -> dict[str, Any] | None:
    """The log at ``path``, or None if there is none (or it is unreadable)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_complete(path: str | os.PathLike) -> bool:
    log = read_log(path)
    return log is not None and log.get("status") in COMPLETE


def iter_logs(root: str | os.PathLike) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every readable run log under ``root``, sorted by path."""
    for path in sorted(Path(root).rglob("*.json")):
        log = read_log(path)
        if log is not None and "status" in log and "learner" in log:
            yield path, log


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "-".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{format_value(v)}" for k, v in value.items())
    return str(value)


def config_name(hyperparameters: dict[str, Any]) -> str:
    """Folder name of a configuration: ``lr_0.001__beta2_0.99`` (lr first, then sorted)."""
    keys = sorted(hyperparameters, key=lambda k: (k != "lr", k))
    return "__".join(f"{k}_{format_value(hyperparameters[k])}" for k in keys)


def config_label(hyperparameters: dict[str, Any]) -> str:
    """How a configuration reads in plots and tables: ``lr=0.001, beta2=0.99``."""
    keys = sorted(hyperparameters, key=lambda k: (k != "lr", k))
    return ", ".join(f"{k}={format_value(hyperparameters[k])}" for k in keys)


def safe_name(name: str) -> str:
    """``name`` as one path component: characters other than letters, digits, '.', '-' and
    '_' become '_' (import paths such as ``torch.optim:RMSprop`` or ``nets.py:net``)."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip(".")
    return cleaned or "_"


def run_path(root: str | os.PathLike, learner: str, hyperparameters: dict[str, Any], seed: int):
    return Path(root) / learner / config_name(hyperparameters) / f"seed_{seed}.json"
