"""Learners: an optimizer by name, plus how the backward pass must run for it.

Every learner is a torch.optim-style optimizer. Those that consume curvature carry ``.method``,
the BackPACK extension to run the backward pass under (``with backpack(opt.method)``); AdaHessian
needs the gradient's graph (``create_graph=True``). ``Learner.step(loss)`` hides the
difference, so the run loop stays one loop. Optimizers are imported only when a learner is built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LearnerSpec:
    target: str  # "module:Class"
    description: str
    create_graph: bool = False  # backward with create_graph=True (Hessian-vector products)


LEARNERS: dict[str, LearnerSpec] = {
    "sgd": LearnerSpec("torch.optim:SGD", "stochastic gradient descent"),
    "adam": LearnerSpec("torch.optim:Adam", "Adam"),
    "adahesscale": LearnerSpec("hesscale.optim:AdaHesScale", "Adam-style, HesScale diagonal"),
    "adahesscalegn": LearnerSpec(
        "hesscale.optim:AdaHesScaleGN", "Adam-style, HesScaleGN (Gauss-Newton) diagonal"
    ),
    "adahessian": LearnerSpec(
        "hesscale.optim:AdaHessian", "AdaHessian (Hutchinson diagonal)", create_graph=True
    ),
    "adaggnmc": LearnerSpec("hesscale.optim:AdaGGNMC", "Adam-style, Monte-Carlo GGN diagonal"),
}


def _optimizer_class(name: str) -> type:
    if name not in LEARNERS:
        raise ValueError(f"Unknown learner '{name}'. Known learners: {', '.join(LEARNERS)}.")
    module_name, class_name = LEARNERS[name].target.split(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"Learner '{name}' needs {module_name}.{class_name}, which this installation does not "
            f"provide ({error})."
        ) from error


def hyperparameter_names(name: str) -> list[str]:
    """Keyword arguments learner ``name`` accepts (``beta1``/``beta2`` stand for ``betas``).

    Read from the signatures of the optimizer's constructors along its class hierarchy, so
    that a subclass may pass the shared options on with ``**options``."""
    names: list[str] = []
    for cls in _optimizer_class(name).__mro__:
        if "__init__" not in vars(cls) or cls in (torch.optim.Optimizer, object):
            continue
        parameters = inspect.signature(cls.__init__).parameters.values()
        names += [
            p.name
            for p in parameters
            if p.name not in ("self", "params", *names)
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break  # this constructor takes nothing more
    if "betas" in names:
        names += ["beta1", "beta2"]
    return names


def check_learner(name: str, hyperparameters: dict[str, Any]) -> None:
    """Raise ValueError if learner ``name`` does not exist or rejects ``hyperparameters``
    (an unknown name, or a value its optimizer refuses), by building it on a dummy parameter."""
    try:
        Learner(name, [nn.Parameter(torch.zeros(1))], **hyperparameters)
    except TypeError as error:
        raise ValueError(f"Learner '{name}': {error}") from None


def _default(name: str, option: str) -> Any:
    for cls in _optimizer_class(name).__mro__:
        parameter = inspect.signature(cls.__init__).parameters.get(option)
        if parameter is not None:
            return parameter.default
    raise KeyError(option)


def _optimizer_kwargs(name: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    allowed = hyperparameter_names(name)
    unknown = sorted(set(hyperparameters) - set(allowed))
    if unknown:
        raise ValueError(
            f"Learner '{name}' has no hyperparameter {', '.join(map(repr, unknown))}. "
            f"It accepts: {', '.join(allowed)}."
        )
    kwargs = {k: v for k, v in hyperparameters.items() if k not in ("beta1", "beta2")}
    if "beta1" in hyperparameters or "beta2" in hyperparameters:
        if "betas" in hyperparameters:
            raise ValueError(f"Learner '{name}': give either betas or beta1/beta2, not both.")
        default = _default(name, "betas")
        kwargs["betas"] = (
            float(hyperparameters.get("beta1", default[0])),
            float(hyperparameters.get("beta2", default[1])),
        )
    return kwargs


class Learner:
    """An optimizer plus the backward pass it needs. ``step(loss)`` does one full update."""

    def __init__(self, name: str, params: Iterable[nn.Parameter], **hyperparameters: Any) -> None:
        if "lr" not in hyperparameters:
            raise ValueError(f"Learner '{name}' needs a step size (lr).")
        self.name = name
        self.hyperparameters = dict(hyperparameters)
        cls = _optimizer_class(name)
        self.optimizer = cls(params, **_optimizer_kwargs(name, hyperparameters))
        self.method = getattr(self.optimizer, "method", None)
        self.create_graph = bool(
            getattr(self.optimizer, "create_graph", LEARNERS[name].create_graph)
        )

    @property
    def uses_backpack(self) -> bool:
        """Whether model and loss must be extended with BackPACK."""
        return self.method is not None

    def backward(self, loss: Tensor) -> None:
        if self.method is not None:
            from backpack import backpack

            with backpack(self.method):
                loss.backward(create_graph=self.create_graph)
        else:
            loss.backward(create_graph=self.create_graph)

    def step(self, loss: Tensor) -> None:
        if self.create_graph:
            # the optimizer differentiates the returned loss itself, with create_graph=True;
            # unlike loss.backward(create_graph=True) this leaves no parameter <-> graph cycle
            self.optimizer.step(lambda: loss)
            return
        self.optimizer.zero_grad()
        self.backward(loss)
        self.optimizer.step()
