"""Experiments: data, tasks, networks, runs, sweeps and the studies (the library itself
never imports this).

They need the ``experiments`` extra (numpy, tqdm, matplotlib, scikit-learn) besides the
library's own torch and BackPACK: ``pip install "hesscale[experiments]"``.

From Python, your own components (what each must be: ``TaskFactory``, ``NetworkFactory``,
``LearnerSpec``)::

    from hesscale import experiments

    experiments.register_network("wide", wide_mlp)  # wide_mlp(input_shape, n_outputs, **options)
    experiments.register_learner("rmsprop", torch.optim.RMSprop)
    experiments.run_sweep({"name": "mine", "task": "digits", "network": "wide", "steps": 500,
                           "learners": {"rmsprop": {"lr": [1e-3, 1e-2]}}}, jobs=2)
    experiments.plot_all("results/mine")

The names below are imported on first use, so that importing a submodule stays light.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.util import find_spec
from typing import Any

EXTRA = {"numpy": "numpy", "tqdm": "tqdm", "matplotlib": "matplotlib", "sklearn": "scikit-learn"}

_missing = [module for module in EXTRA if find_spec(module) is None]
if _missing:
    raise ModuleNotFoundError(
        f"hesscale.experiments needs {', '.join(EXTRA[m] for m in _missing)}, from hesscale's "
        "'experiments' extra: pip install \"hesscale[experiments]\" (from a checkout: "
        'pip install -e ".[dev]")',
        name=_missing[0],
    )

_LAZY = {
    "TaskSettings": "hesscale.experiments.tasks",
    "TaskFactory": "hesscale.experiments.tasks",
    "SupervisedTask": "hesscale.experiments.tasks",
    "Stream": "hesscale.experiments.tasks",
    "Dataset": "hesscale.experiments.tasks",
    "TASKS": "hesscale.experiments.tasks",
    "NetworkFactory": "hesscale.experiments.networks",
    "NETWORKS": "hesscale.experiments.networks",
    "LearnerSpec": "hesscale.experiments.learners",
    "LEARNERS": "hesscale.experiments.learners",
    "RunConfig": "hesscale.experiments.run",
    "train": "hesscale.experiments.run",
    "run_and_log": "hesscale.experiments.run",
    "run_sweep": "hesscale.experiments.sweep.api",
    "plot_all": "hesscale.experiments.plot",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hesscale.experiments' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _register(kind: str, name: str, component: Any, path: str | None) -> None:
    import sys

    from hesscale.experiments.components import importable_path

    registry = getattr(importlib.import_module(f"hesscale.experiments.{kind}s"), f"{kind.upper()}S")
    frame = inspect.currentframe()
    caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
    namespaces = [caller.f_globals] if caller is not None else []
    optimizer = getattr(component, "optimizer", None)  # a LearnerSpec: where its class lives
    if isinstance(optimizer, type) and optimizer.__module__ in sys.modules:
        namespaces.append(vars(sys.modules[optimizer.__module__]))
    registry.register(name, component, path=path or importable_path(component, namespaces))


def register_task(name: str, factory: Any, *, path: str | None = None) -> None:
    """Make ``factory`` (a ``TaskFactory``: ``factory(settings, **options)`` returning a task
    with ``input_shape``, ``n_outputs`` and ``next_batch()``) the task ``name``. A name ending
    in ``*`` registers a family (``"rl:*"``: every task name that starts with ``rl:``).

    ``path``: an import path that gives ``factory`` back in another process (a process pool,
    a SLURM job); by default found from where it is defined."""
    _register("task", name, factory, path)


def register_network(name: str, factory: Any, *, path: str | None = None) -> None:
    """Make ``factory`` (a ``NetworkFactory``: ``factory(input_shape, n_outputs, **options)``
    returning a new nn.Module; an nn.Module subclass will do) the network ``name``."""
    _register("network", name, factory, path)


def register_learner(name: str, learner: Any, *, path: str | None = None) -> None:
    """Make ``learner`` (a torch.optim.Optimizer subclass, or a ``LearnerSpec`` naming the
    backward pass its optimizer needs: ``hesscale``, ``hesscale_gn``, ``create_graph``, ...)
    the learner ``name``."""
    _register("learner", name, learner, path)
