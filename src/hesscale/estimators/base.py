"""The interface every diagonal estimator implements, and the bookkeeping they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn


class Estimator(ABC):
    """One way to get a per-parameter diagonal of the Hessian of ``loss_fn(model(x), y)``.

    ``estimate`` returns one tensor per parameter of ``model`` that requires grad, in the order
    of ``model.parameters()``, each with that parameter's shape and dtype. It leaves the model
    as it found it: ``.grad`` fields are restored and no result attributes stay behind.
    """

    name: str
    stochastic: bool = False
    one_backprop: bool = False  # costs about one extra backward pass (the paper's comparison)

    @abstractmethod
    def estimate(self, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        """The diagonal for each trainable parameter of ``model`` at the batch ``(x, y)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an estimator reports on, in ``model.parameters()`` order."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameter that requires grad")
    return params


@contextmanager
def clean_gradients(params: list[nn.Parameter], *fields: str) -> Iterator[None]:
    """Run a backward pass on fresh ``.grad`` fields, then restore them and drop ``fields``."""
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad
            for field in fields:
                if hasattr(p, field):
                    delattr(p, field)


def check_samples(samples: int, what: str) -> int:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{what} must be a positive integer, got {samples!r}")
    return samples
