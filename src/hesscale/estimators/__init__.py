"""Every way to get a per-parameter Hessian diagonal, behind one interface (``Estimator``).

    est = hesscale.estimators.kfac(samples=1)
    diagonals = est.estimate(model, loss_fn, x, y)   # one tensor per trainable parameter

``standard_estimators(samples)`` lists the methods of the approximation-quality study on a
chain of modules (BackPACK-based where BackPACK has the method); ``any_model_estimators(samples)``
those that work on any nn.Module (autograd's exact diagonals, ``hesscale.backward``). Each
method also has a constructor of its own, exported here; the classes behind them live in the
submodules (``backpack_based``, ``autograd_based``, ``any_model``, ``bl89``).
"""

from __future__ import annotations

from hesscale.estimators.any_model import any_model_estimators
from hesscale.estimators.autograd_based import Hutchinson, SquaredGradient, Zero
from hesscale.estimators.backpack_based import (
    bl89,
    exact_ggn,
    exact_hessian,
    ggn_mc,
    hesscale_estimator,
    hesscale_gn_estimator,
    kfac,
)
from hesscale.estimators.base import Estimator


def standard_estimators(samples: int = 10) -> list[Estimator]:
    """The approximation-quality study's methods, for a chain of modules.

    Args:
        samples: the larger number of draws for the sampled methods (they also run with 1).

    Returns:
        Exact Hessian and GGN, GGN-MC, KFAC and Hutchinson with 1 and ``samples`` draws, BL89,
        squared gradient, HesScale, HesScaleGN and zero, in that order.
    """
    methods: list[Estimator] = [exact_hessian(), exact_ggn()]
    for draws in sorted({1, samples}):
        methods += [ggn_mc(draws), kfac(draws), Hutchinson(draws)]
    methods += [bl89(), SquaredGradient(), hesscale_estimator(), hesscale_gn_estimator(), Zero()]
    return methods


__all__ = [
    "Estimator",
    "standard_estimators",
    "any_model_estimators",
    "exact_hessian",
    "exact_ggn",
    "ggn_mc",
    "kfac",
    "bl89",
    "Hutchinson",
    "SquaredGradient",
    "hesscale_estimator",
    "hesscale_gn_estimator",
    "Zero",
]
