"""Estimators that read a diagonal off one BackPACK extension's backward pass."""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce

import torch
from backpack import backpack, extend
from backpack.extensions import KFAC, DiagGGNExact, DiagGGNMC, DiagHessian
from backpack.extensions.backprop_extension import BackpropExtension
from torch import Tensor, nn

from hesscale.estimators.base import Estimator, check_samples, clean_gradients, trainable
from hesscale.estimators.bl89 import BL89 as BL89Extension
from hesscale.extensions import HesScale as HesScaleExtension
from hesscale.extensions import HesScaleGN as HesScaleGNExtension
from hesscale.hook_warning import hook_warning_hidden


class BackpackEstimator(Estimator):
    """Runs ``loss_fn(model(x), y).backward()`` inside ``backpack(extension)`` and reads
    ``p.<savefield>`` (through ``to_diagonal``) for every trainable parameter.

    The model and the loss are extended in place (``backpack.extend``) if they are not yet.
    """

    def __init__(
        self,
        name: str,
        make_extension: Callable[[], BackpropExtension],
        savefield: str,
        to_diagonal: Callable[[object, Tensor], Tensor] | None = None,
        stochastic: bool = False,
        one_backprop: bool = False,
    ) -> None:
        self.name = name
        self.make_extension = make_extension
        self.savefield = savefield
        self.to_diagonal = to_diagonal
        self.stochastic = stochastic
        self.one_backprop = one_backprop

    def estimate(self, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        params = trainable(model)
        extend(model)
        extend(loss_fn)
        with clean_gradients(params, self.savefield):
            loss = loss_fn(model(x), y)
            with backpack(self.make_extension()), hook_warning_hidden():
                loss.backward()
            results = []
            for p in params:
                value = getattr(p, self.savefield, None)
                if value is None:
                    raise RuntimeError(
                        f"{self.name}: BackPACK left no '{self.savefield}' on a parameter of shape "
                        f"{tuple(p.shape)}; every module owning parameters must be supported by "
                        f"{type(self.make_extension()).__name__} and used as an nn.Module."
                    )
                diagonal = value if self.to_diagonal is None else self.to_diagonal(value, p)
                results.append(diagonal.detach().clone())
        return results


def kron_diagonal(factors: list[Tensor]) -> Tensor:
    """diag(A_1 kron A_2 kron ...) = outer product of diag(A_1), diag(A_2), ..., flattened.

    The Kronecker product itself is never formed: its diagonal entry at the multi-index
    (i_1, i_2, ...) is A_1[i_1, i_1] * A_2[i_2, i_2] * ...
    """
    if not factors:
        raise ValueError("kron_diagonal needs at least one factor")
    for factor in factors:
        if factor.dim() != 2 or factor.shape[0] != factor.shape[1]:
            raise ValueError(
                f"Kronecker factors must be square matrices, got shape {tuple(factor.shape)}"
            )
    diagonals = [factor.diagonal() for factor in factors]
    return reduce(lambda a, b: torch.outer(a, b).flatten(), diagonals)


def _kfac_to_diagonal(factors: list[Tensor], param: Tensor) -> Tensor:
    """BackPACK orders the factors so that their Kronecker product matches the parameter's
    row-major flattening (for Linear's weight: [G_out, A_in])."""
    return kron_diagonal(list(factors)).reshape(param.shape)


def exact_hessian() -> BackpackEstimator:
    """The exact Hessian diagonal (BackPACK's DiagHessian)."""
    return BackpackEstimator("Exact", DiagHessian, "diag_h")


def exact_ggn() -> BackpackEstimator:
    """The exact diagonal of the generalised Gauss-Newton matrix (BackPACK's DiagGGNExact)."""
    return BackpackEstimator("GGN", DiagGGNExact, "diag_ggn_exact")


def ggn_mc(samples: int = 1) -> BackpackEstimator:
    """The GGN diagonal with the loss Hessian replaced by ``samples`` Monte-Carlo samples of
    its square root drawn from the model's predictive distribution (BackPACK's DiagGGNMC)."""
    check_samples(samples, "GGN-MC samples")
    return BackpackEstimator(
        f"GGN-MC-{samples}",
        lambda: DiagGGNMC(mc_samples=samples),
        "diag_ggn_mc",
        stochastic=True,
        one_backprop=samples == 1,
    )


def kfac(samples: int = 1) -> BackpackEstimator:
    """The diagonal of KFAC's Kronecker-factored GGN with ``samples`` Monte-Carlo samples
    (BackPACK's KFAC), taken from the factors' diagonals without forming the product."""
    check_samples(samples, "KFAC samples")
    return BackpackEstimator(
        f"KFAC-{samples}",
        lambda: KFAC(mc_samples=samples),
        "kfac",
        to_diagonal=_kfac_to_diagonal,
        stochastic=True,
        one_backprop=samples == 1,
    )


def hesscale_estimator() -> BackpackEstimator:
    """HesScale (this package)."""
    return BackpackEstimator("HesScale", HesScaleExtension, "hesscale", one_backprop=True)


def hesscale_gn_estimator() -> BackpackEstimator:
    """HesScaleGN, the Gauss-Newton variant of HesScale (this package)."""
    return BackpackEstimator("HesScaleGN", HesScaleGNExtension, "hesscale_gn", one_backprop=True)


def bl89() -> BackpackEstimator:
    """Becker & LeCun (1989): HesScale's recursion with the softmax taken element-wise."""
    return BackpackEstimator("BL89", BL89Extension, "bl89", one_backprop=True)
