"""The methods the cost study compares: each prepares its own copy of the model and returns a
Step, one training step (or one backward pass with curvature) to time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hesscale.experiments.cost.models import Problem
from hesscale.hook_warning import hook_warning_hidden

REFERENCE = "forward+backward"


@dataclass
class Step:
    """One training step of one method, and what it keeps resident between steps."""

    run: Callable[[], None]
    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None

    def reset(self) -> None:
        """Drop what the previous step left on the parameters (gradients, curvature fields)."""
        for param in self.model.parameters():
            param.grad = None
            for name in [k for k, v in vars(param).items() if isinstance(v, Tensor | list)]:
                delattr(param, name)

    def resident_bytes(self, batch: tuple[Tensor, ...]) -> int:
        tensors = [*self.model.parameters(), *self.model.buffers(), *batch]
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                tensors += [v for v in state.values() if isinstance(v, Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class Method:
    name: str
    group: str  # "backprop", "curvature" or "optimizer step"
    prepare: Callable[[Problem], Step]


def _plain(problem: Problem) -> Step:
    model, loss_fn = problem.copy(extended=False)

    def run() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(problem.x), problem.y).backward()

    return Step(run, model)


def _backpack_step(make_extensions: Callable[[], list]) -> Callable[[Problem], Step]:
    """A step with ``with backpack(*extensions): loss.backward()`` on an extended copy."""

    def prepare(problem: Problem) -> Step:
        from backpack import backpack

        model, loss_fn = problem.copy(extended=True)
        extensions = make_extensions()

        def run() -> None:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(problem.x), problem.y)
            with backpack(*extensions), hook_warning_hidden():  # (first layer: noise)
                loss.backward()

        return Step(run, model)

    return prepare


def _engine(gn: bool) -> Callable[[Problem], Step]:
    """``hesscale.backward(loss)`` on the plain model (the any-model engine)."""

    def prepare(problem: Problem) -> Step:
        import hesscale

        model, loss_fn = problem.copy(extended=False)

        def run() -> None:
            model.zero_grad(set_to_none=True)
            hesscale.backward(loss_fn(model(problem.x), problem.y), gn=gn)

        return Step(run, model)

    return prepare


def _hesscale(name: str) -> Callable[[], list]:
    def make() -> list:
        import hesscale

        return [getattr(hesscale, name)()]

    return make


def _backpack_ext(name: str, **kwargs) -> Callable[[], list]:
    def make() -> list:
        from backpack import extensions

        return [getattr(extensions, name)(**kwargs)]

    return make


def _hutchinson(problem: Problem) -> Step:
    """hesscale.estimators.Hutchinson with one probe (gradient with its graph, then one
    Hessian-vector product)."""
    from hesscale.estimators import Hutchinson

    model, loss_fn = problem.copy(extended=False)
    estimator = Hutchinson(samples=1)

    def run() -> None:
        estimator.estimate(model, loss_fn, problem.x, problem.y)

    return Step(run, model)


def _torch_optimizer(name: str) -> Callable[[Problem], Step]:
    def prepare(problem: Problem) -> Step:
        model, loss_fn = problem.copy(extended=False)
        optimizer = getattr(torch.optim, name)(model.parameters(), lr=1e-5)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(problem.x), problem.y).backward()
            optimizer.step()

        return Step(run, model, optimizer)

    return prepare


def _hesscale_optimizer(name: str) -> Callable[[Problem], Step]:
    """An optimizer from hesscale.optim, stepped with a closure that returns the loss: the
    optimizer runs the backward pass it needs itself (AdaHesScale: ``hesscale.backward`` on
    the plain model; AdaGGNMC: under ``opt.method``, BackPACK's extension, on an extended copy;
    AdaHessian: with ``create_graph=True``)."""

    def prepare(problem: Problem) -> Step:
        import hesscale.optim

        cls = getattr(hesscale.optim, name)
        model, loss_fn = problem.copy(extended=cls is hesscale.optim.AdaGGNMC)
        optimizer = cls(model.parameters(), lr=1e-5)

        def run() -> None:
            optimizer.step(lambda: loss_fn(model(problem.x), problem.y))

        return Step(run, model, optimizer)

    return prepare


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(REFERENCE, "backprop", _plain),
        Method("BackPACK hooks only", "backprop", _backpack_step(list)),
        Method("HesScale", "curvature", _engine(gn=False)),
        Method("HesScaleGN", "curvature", _engine(gn=True)),
        Method("HesScale (BackPACK)", "curvature", _backpack_step(_hesscale("HesScale"))),
        Method("HesScaleGN (BackPACK)", "curvature", _backpack_step(_hesscale("HesScaleGN"))),
        Method("DiagGGNMC", "curvature", _backpack_step(_backpack_ext("DiagGGNMC"))),
        Method("DiagGGNExact", "curvature", _backpack_step(_backpack_ext("DiagGGNExact"))),
        Method("DiagHessian", "curvature", _backpack_step(_backpack_ext("DiagHessian"))),
        Method("KFAC", "curvature", _backpack_step(_backpack_ext("KFAC", mc_samples=1))),
        Method("Hutchinson (1 probe)", "curvature", _hutchinson),
        Method("SGD", "optimizer step", _torch_optimizer("SGD")),
        Method("Adam", "optimizer step", _torch_optimizer("Adam")),
        Method("AdaHesScale", "optimizer step", _hesscale_optimizer("AdaHesScale")),
        Method("AdaHesScaleGN", "optimizer step", _hesscale_optimizer("AdaHesScaleGN")),
        Method("AdaHessian", "optimizer step", _hesscale_optimizer("AdaHessian")),
        Method("AdaGGNMC", "optimizer step", _hesscale_optimizer("AdaGGNMC")),
    ]
}
