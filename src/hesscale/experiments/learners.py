"""Learners: an optimizer class plus the backward pass its ``step()`` needs.

A learner is a ``LearnerSpec``: a ``torch.optim.Optimizer`` subclass and how gradients (and
curvature) must be computed before each ``step()``:

- ``"gradient"``: ``loss.backward()`` (SGD, Adam, any plain torch.optim optimizer);
- ``"hesscale"`` / ``"hesscale_gn"``: ``hesscale.backward(loss)`` / ``(loss, gn=True)``, which
  leaves the HesScale / HesScaleGN diagonal in ``p.hesscale`` / ``p.hesscale_gn`` beside
  ``p.grad``, for any network (AdaHesScale, AdaHesScaleGN);
- ``"create_graph"``: gradients with their graph (``p.grad`` differentiable), for
  Hessian-vector products (AdaHessian);
- ``"backpack"``: the network and loss ``backpack.extend``-ed and backward run under the
  optimizer's ``method`` (a BackPACK extension; AdaGGNMC), which needs a chain of modules.

Any optimizer class named by import path is a learner (``torch.optim:RMSprop``): hesscale's
own declare what they need; any other gets ``"gradient"``. To give your own optimizer another
backward pass, name a ``LearnerSpec`` instead (or register one with
``hesscale.experiments.register_learner``). Hyperparameters are the optimizer's keyword
arguments (``beta1``/``beta2`` stand for ``betas``). ``Learner.step(loss)`` does one update.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from hesscale.errors import ComponentError
from hesscale.experiments.components import Registry, describe_object

Backward = Literal["gradient", "hesscale", "hesscale_gn", "create_graph", "backpack"]
BACKWARDS: tuple[str, ...] = get_args(Backward)


@dataclass(frozen=True)
class LearnerSpec:
    """A learner: an optimizer class and the backward pass its ``step()`` needs (see the module
    docstring). ``optimizer`` may be a ``"module:Class"`` string, imported when first used."""

    optimizer: type[torch.optim.Optimizer] | str
    backward: Backward = "gradient"
    description: str = ""

    def __post_init__(self) -> None:
        if self.backward not in BACKWARDS:
            raise ComponentError(
                f"LearnerSpec(backward={self.backward!r}): use one of {', '.join(BACKWARDS)}."
            )

    def optimizer_class(self) -> type[torch.optim.Optimizer]:
        if not isinstance(self.optimizer, str):
            return self.optimizer
        module_name, _, class_name = self.optimizer.partition(":")
        try:
            return getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            raise ComponentError(
                f"Learner needs {self.optimizer}, which this installation does not provide "
                f"({error})."
            ) from error


def backward_of(cls: type[torch.optim.Optimizer]) -> Backward:
    """The backward pass an optimizer class needs: hesscale's optimizers say so (AdaHesScale:
    its ``gn``; ``create_graph``; other diagonal optimizers read BackPACK's ``method``); any
    other optimizer needs the gradient only."""
    if getattr(cls, "create_graph", False) is True:
        return "create_graph"
    if cls.__module__.startswith("hesscale.optim"):
        from hesscale.optim import AdaHesScale
        from hesscale.optim.base import ExtensionAdam

        if issubclass(cls, AdaHesScale):
            return "hesscale_gn" if cls.gn else "hesscale"
        if issubclass(cls, ExtensionAdam):
            return "backpack"
    return "gradient"


def check_learner_spec(obj: Any, what: str) -> LearnerSpec:
    """``obj`` as a LearnerSpec (an optimizer class gets the backward pass it needs), or
    ComponentError."""
    expected = (
        "a learner: a torch.optim.Optimizer subclass (e.g. torch.optim:RMSprop) or a "
        "hesscale.experiments.LearnerSpec (an optimizer class and the backward pass it needs)"
    )
    if isinstance(obj, LearnerSpec):
        spec = obj
    elif isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer):
        spec = LearnerSpec(obj, backward_of(obj), (obj.__doc__ or "").strip().split("\n")[0])
    elif isinstance(obj, torch.optim.Optimizer):
        raise ComponentError(
            f"{what} is an optimizer instance ({type(obj).__name__}); name its class instead "
            f"(each run builds its own): expected {expected}."
        )
    else:
        raise ComponentError(f"{what} is {describe_object(obj)}; expected {expected}.")
    if isinstance(spec.optimizer, str):
        return spec  # a built-in, imported when used
    if not (isinstance(spec.optimizer, type) and issubclass(spec.optimizer, torch.optim.Optimizer)):
        raise ComponentError(
            f"{what}: its optimizer is {describe_object(spec.optimizer)}; expected a "
            "torch.optim.Optimizer subclass."
        )
    closure = inspect.signature(spec.optimizer.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ComponentError(
            f"{what}: {spec.optimizer.__name__}.step() needs a closure that evaluates the loss "
            "again (as LBFGS does); the runs take one step per mini-batch, after one backward "
            "pass, so they cannot drive it."
        )
    return spec


LEARNERS: Registry[LearnerSpec] = Registry("learner", check_learner_spec)
for _name, _spec in {
    "sgd": LearnerSpec("torch.optim:SGD", "gradient", "stochastic gradient descent"),
    "adam": LearnerSpec("torch.optim:Adam", "gradient", "Adam"),
    "adahesscale": LearnerSpec(
        "hesscale.optim:AdaHesScale", "hesscale", "Adam-style, HesScale diagonal"
    ),
    "adahesscalegn": LearnerSpec(
        "hesscale.optim:AdaHesScaleGN",
        "hesscale_gn",
        "Adam-style, HesScaleGN (Gauss-Newton) diagonal",
    ),
    "adahessian": LearnerSpec(
        "hesscale.optim:AdaHessian", "create_graph", "AdaHessian (Hutchinson diagonal)"
    ),
    "sophiagn": LearnerSpec(
        "hesscale.optim:SophiaGN", "hesscale_gn", "Sophia's clipped step, HesScaleGN diagonal"
    ),
    "adamw": LearnerSpec("torch.optim:AdamW", "gradient", "AdamW"),
    "adaggnmc": LearnerSpec(
        "hesscale.optim:AdaGGNMC", "backpack", "Adam-style, Monte-Carlo GGN diagonal (BackPACK)"
    ),
}.items():
    LEARNERS.register(_name, _spec, builtin=True)


def _spec(learner: str | LearnerSpec) -> LearnerSpec:
    return learner if isinstance(learner, LearnerSpec) else LEARNERS.resolve(learner).value


def hyperparameter_names(learner: str | LearnerSpec) -> list[str]:
    """Keyword arguments the learner accepts (``beta1``/``beta2`` stand for ``betas``).

    Read from the signatures of the optimizer's constructors along its class hierarchy, so
    that a subclass may pass the shared options on with ``**options``."""
    names: list[str] = []
    for cls in _spec(learner).optimizer_class().__mro__:
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


def check_learner(
    learner: str | LearnerSpec, hyperparameters: dict[str, Any], label: str | None = None
) -> None:
    """Raise ValueError if the learner does not exist or rejects ``hyperparameters`` (an
    unknown name, or a value its optimizer refuses), by building it on a dummy parameter."""
    spec = _spec(learner)
    name = label or (learner if isinstance(learner, str) else str(spec.optimizer))
    try:
        Learner(spec, [nn.Parameter(torch.zeros(1))], label=name, **hyperparameters)
    except TypeError as error:
        raise ValueError(f"Learner '{name}': {error}") from None
    except ValueError as error:
        if isinstance(error, ComponentError) or str(error).startswith(f"Learner '{name}'"):
            raise
        raise ValueError(f"Learner '{name}': {error}") from None


def _default(spec: LearnerSpec, option: str) -> Any:
    for cls in spec.optimizer_class().__mro__:
        parameter = inspect.signature(cls.__init__).parameters.get(option)
        if parameter is not None:
            return parameter.default
    raise KeyError(option)


def _optimizer_kwargs(name: str, spec: LearnerSpec, hyperparameters: dict[str, Any]) -> dict:
    allowed = hyperparameter_names(spec)
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
        default = _default(spec, "betas")
        kwargs["betas"] = (
            float(hyperparameters.get("beta1", default[0])),
            float(hyperparameters.get("beta2", default[1])),
        )
    return kwargs


class Learner:
    """An optimizer plus the backward pass it needs. ``step(loss)`` does one full update."""

    def __init__(
        self,
        learner: str | LearnerSpec,
        params: Iterable[nn.Parameter],
        /,
        label: str | None = None,
        **hyperparameters: Any,
    ) -> None:
        self.spec = _spec(learner)
        self.name = label or (learner if isinstance(learner, str) else str(self.spec.optimizer))
        if "lr" not in hyperparameters:
            raise ValueError(f"Learner '{self.name}' needs a step size (lr).")
        self.hyperparameters = dict(hyperparameters)
        kwargs = _optimizer_kwargs(self.name, self.spec, hyperparameters)
        self.optimizer = self.spec.optimizer_class()(params, **kwargs)
        self.backward_pass: Backward = self.spec.backward

    @property
    def uses_backpack(self) -> bool:
        """Whether model and loss must be extended with BackPACK."""
        return self.backward_pass == "backpack"

    def prepare(self, model: nn.Module, loss_fn: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The model and loss as this learner's backward pass needs them (BackPACK: extended,
        after checking that the model is a chain of modules)."""
        if not self.uses_backpack:
            return model, loss_fn
        check_backpack_chain(model, self.name)
        from backpack import extend

        return extend(model), extend(loss_fn)

    def _params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]

    def backward(self, loss: Tensor, output: Tensor | None = None) -> None:
        """The backward pass the optimizer needs (``output``: the network output, for
        HesScaleGN on a loss it does not recognise)."""
        kind = self.backward_pass
        if kind == "gradient":
            loss.backward()
        elif kind in ("hesscale", "hesscale_gn"):
            import hesscale

            if kind == "hesscale_gn" and output is not None:
                hesscale.backward(loss, gn=True, output=output)
            else:
                hesscale.backward(loss, gn=kind == "hesscale_gn")
        elif kind == "create_graph":
            # autograd.grad instead of loss.backward(create_graph=True): no parameter <-> graph
            # reference cycle warning; step() sees the same differentiable p.grad
            params = self._params()
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
        else:
            from backpack import backpack

            with backpack(self.optimizer.method):
                loss.backward()

    def step(self, loss: Tensor, output: Tensor | None = None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss, output)
        self.optimizer.step()
        if self.backward_pass == "create_graph":
            self.optimizer.zero_grad(set_to_none=True)  # let go of the gradients' graph


def check_backpack_chain(model: nn.Module, learner: str) -> None:
    """ComponentError unless ``model`` is built of nn.Sequential containers and leaf modules:
    BackPACK sees modules only, so operations in a module's own forward (a residual addition,
    a functional activation) would be missed."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential) or not any(True for _ in module.children()):
            continue
        where = f"its submodule '{name}'" if name else "it"
        raise ComponentError(
            f"Learner '{learner}' runs BackPACK, which needs the network to be a chain of "
            f"modules (nn.Sequential containers of layers BackPACK knows), but {where} is a "
            f"{type(module).__name__} with a forward of its own, whose operations (e.g. "
            "residual additions) BackPACK cannot see. Use a learner whose diagonal comes from "
            "hesscale.backward (adahesscale, adahesscalegn), which works on any network."
        )
