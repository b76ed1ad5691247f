"""SophiaGN: Sophia (Liu et al. 2023) with its curvature from HesScaleGN diagonals."""

from __future__ import annotations

from typing import Any

from hesscale.optim import update
from hesscale.optim.adahesscale import AdaHesScaleGN
from hesscale.optim.base import ParamsT


class SophiaGN(AdaHesScaleGN):
    r"""Sophia's clipped Newton-like step, fed by the HesScaleGN diagonal of every step.

    With g the gradient and h the HesScaleGN diagonal (``p.hesscale_gn``), at each step:

    .. math::
        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) h, \\
        p &\leftarrow p (1 - \eta \lambda)
            - \eta \, \mathrm{clamp}\!\left(\frac{m}{\max(\rho v, \epsilon)}, -1, 1\right)

    (no bias correction, as in Sophia). Each coordinate moves by at most lr. Sophia's own
    estimators (Hutchinson, Gauss-Newton-Bartlett) refresh h every 10 steps; here h comes with
    every backward pass (``hesscale.backward(loss, gn=True)``, the closure, or
    ``with backpack(opt.method)``), driven as AdaHesScaleGN (see its docstring).

    Args:
        params: parameters or param groups.
        lr: the largest step per coordinate, eta.
        betas: (beta_1, beta_2), the decay rates of m and v (Sophia's 0.965, 0.99).
        rho: the scale of the curvature, rho (Sophia's 0.04).
        eps: the floor of rho v, epsilon.
        weight_decay: decoupled weight decay, lambda.
        maximize: ascend instead.
        on_nonfinite: 'raise' or 'skip' (as AdaHesScale).
        foreach: use torch's multi-tensor operations (default: yes).

    Raises:
        ValueError: an invalid hyperparameter (named in the message).
        NonFiniteError: a gradient or diagonal holds inf/NaN (``on_nonfinite='raise'``).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        eps: float = 1e-12,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        on_nonfinite: str = "raise",
        foreach: bool | None = None,
    ) -> None:
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not rho > 0:
            raise ValueError(f"SophiaGN: invalid rho={rho!r}; need rho > 0.")
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            maximize=maximize,
            on_nonfinite=on_nonfinite,
            foreach=foreach,
        )
        for group in self.param_groups:
            group.setdefault("rho", rho)
        self.defaults["rho"] = rho

    def _update_group(self, group: dict[str, Any], diagonals: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        beta1, beta2 = group["betas"]
        update.sophia_group_step(
            params,
            update.multi_tensor.neg(grads) if group["maximize"] else grads,
            [diagonals[id(p)] for p in params],
            [self.state[p] for p in params],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            rho=group["rho"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            foreach=group["foreach"],
        )
