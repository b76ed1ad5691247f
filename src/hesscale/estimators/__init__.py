"""Every way to get a per-parameter Hessian diagonal, behind one interface (``Estimator``).

    est = hesscale.estimators.kfac(samples=1)
    diagonals = est.estimate(model, loss_fn, x, y)   # one tensor per trainable parameter

``standard_estimators(samples)`` lists the methods of the approximation-quality study on a
chain of modules (BackPACK-based where BackPACK has the method); ``any_model_estimators(samples)``
those that work on any nn.Module (autograd's exact diagonals, ``hesscale.backward``).
"""

from __future__ import annotations

from hesscale.estimators.any_model import (
    EngineHesScale,
    ExactGGNAutograd,
    ExactHessianAutograd,
    MonteCarloGGNAutograd,
    any_model_estimators,
)
from hesscale.estimators.autograd_based import Hutchinson, SquaredGradient, Zero, rademacher
from hesscale.estimators.backpack_based import (
    BackpackEstimator,
    bl89,
    exact_ggn,
    exact_hessian,
    ggn_mc,
    hesscale_estimator,
    hesscale_gn_estimator,
    kfac,
    kron_diagonal,
)
from hesscale.estimators.base import Estimator
from hesscale.estimators.bl89 import BL89


def standard_estimators(samples: int = 10) -> list[Estimator]:
    """The study's methods: exact Hessian and GGN, GGN-MC, KFAC and Hutchinson with 1 and
    ``samples`` draws, BL89, squared gradient, HesScale, HesScaleGN and zero."""
    methods: list[Estimator] = [exact_hessian(), exact_ggn()]
    for draws in sorted({1, samples}):
        methods += [ggn_mc(draws), kfac(draws), Hutchinson(draws)]
    methods += [bl89(), SquaredGradient(), hesscale_estimator(), hesscale_gn_estimator(), Zero()]
    return methods


__all__ = [
    "BL89",
    "EngineHesScale",
    "ExactGGNAutograd",
    "ExactHessianAutograd",
    "MonteCarloGGNAutograd",
    "any_model_estimators",
    "BackpackEstimator",
    "Estimator",
    "Hutchinson",
    "SquaredGradient",
    "Zero",
    "bl89",
    "exact_ggn",
    "exact_hessian",
    "ggn_mc",
    "hesscale_estimator",
    "hesscale_gn_estimator",
    "kfac",
    "kron_diagonal",
    "rademacher",
    "standard_estimators",
]
