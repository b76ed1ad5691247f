"""Curvature backends for laplace-torch (``pip install hesscale[laplace]``)::

    from laplace import Laplace
    from hesscale.integrations.laplace import HesScaleGGN

    la = Laplace(model, "classification", subset_of_weights="all",
                 hessian_structure="diag", backend=HesScaleGGN)
    la.fit(train_loader)

``HesScaleGGN`` gives laplace-torch the HesScaleGN diagonal, ``HesScaleHessian`` the HesScale
diagonal (of the Hessian), each from one ``hesscale.backward`` pass per batch on any model
hesscale supports, where laplace-torch's exact diagonal builds per-example Jacobians and its
BackPACK backend needs a chain of supported modules. Only ``hessian_structure="diag"`` is
served (``diag``); Jacobians for the GLM predictive come from laplace-torch's own
``torch.func`` implementation.

As for laplace-torch's own backends, the loss is the sum over the batch (``reduction="sum"``)
times ``factor``: 1 for cross-entropy (classification), 1/2 for the squared error
(regression), so that H is the curvature of the negative log-likelihood with unit noise.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from laplace.curvature import CurvatureInterface, GGNInterface
from torch import Tensor

from hesscale.integrations.dataset import loss_diagonal

__all__ = ["HesScaleGGN", "HesScaleHessian"]


class _HesScaleDiagonal:
    """``diag`` for the backends below; ``gn`` picks HesScaleGN or HesScale."""

    gn: bool

    def diag(self, x: Tensor | MutableMapping, y: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """(factor * loss, factor * the diagonal of the batch's summed loss), the diagonal
        flattened in the order of the backend's parameters (or its subnetwork's indices)."""
        if isinstance(x, MutableMapping):
            raise ValueError(
                f"{type(self).__name__}: dict-like inputs are not supported; use tensors."
            )
        if kwargs.get("stochastic") or getattr(self, "stochastic", False):
            raise ValueError(
                f"{type(self).__name__}: stochastic=True (a Monte-Carlo Fisher) is not "
                "supported; HesScale's diagonal is deterministic."
            )
        with torch.enable_grad():
            f = self.model(x)
            if self.likelihood == "classification":  # as laplace-torch: classes last
                f, y = f.reshape(-1, f.shape[-1]), y.reshape(-1)
            loss = self.lossfunc(f, y)
        diagonal = torch.cat([h.flatten() for h in loss_diagonal(loss, self.params, self.gn)])
        if self.subnetwork_indices is not None:
            diagonal = diagonal[self.subnetwork_indices]
        return self.factor * loss.detach(), self.factor * diagonal

    def kron(self, *args: Any, **kwargs: Any):
        raise ValueError(
            f"{type(self).__name__} serves hessian_structure='diag' only (not 'kron')."
        )

    def full(self, *args: Any, **kwargs: Any):
        raise ValueError(
            f"{type(self).__name__} serves hessian_structure='diag' only (not 'full')."
        )


class HesScaleGGN(_HesScaleDiagonal, GGNInterface):
    """laplace-torch backend: the HesScaleGN diagonal of the generalized Gauss-Newton matrix
    (exact for the last layer; the Fisher for laplace-torch's likelihoods). Supports
    ``subset_of_weights`` "all", "last_layer" and "subnetwork"."""

    gn = True


class HesScaleHessian(_HesScaleDiagonal, CurvatureInterface):
    """laplace-torch backend: the HesScale diagonal of the Hessian. Away from a minimum, as any
    Hessian, it can have negative entries; the posterior precision H + prior precision must
    then still be positive (a larger prior precision), or laplace-torch's scales become NaN.
    laplace-torch's subnetwork Laplace accepts only GGN and EF backends, so this one serves
    "all" and "last_layer"."""

    gn = False
