"""AdaHessian (Yao et al. 2021): the Adam-style update with a Hutchinson Hessian diagonal."""

from __future__ import annotations

import torch
from torch import Tensor

from hesscale.errors import HesScaleError
from hesscale.optim.base import DiagonalAdam, ParamsT
from hesscale.probes import rademacher


def spatial_average(d: Tensor) -> Tensor:
    """Average over a convolution kernel's spatial dims (2, 3, ...), broadcast back.

    Parameters with fewer than three dims (linear weights, biases) are returned unchanged."""
    if d.dim() < 3:
        return d
    return d.mean(dim=tuple(range(2, d.dim())), keepdim=True).expand_as(d)


class AdaHessian(DiagonalAdam):
    r"""AdaHessian: Adam with v averaging D^2, D = |v * Hv| for a Rademacher vector v.

    .. math::
        D_t &= |z \odot H_t z|, \quad z \sim \mathrm{Rademacher}
            \text{ (spatially averaged for conv kernels)}, \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) D_t^2, \\
        p_t &= p_{t-1} (1 - \eta\lambda) - \eta \frac{m_t / (1 - \beta_1^t)}
            {(\sqrt{v_t / (1 - \beta_2^t)})^{k} + \epsilon}, \quad k = \text{hessian\_power}.

    D is Hutchinson's one-sample estimate of |diag(H)| (v*Hv is unbiased for diag(H)),
    averaged over the spatial dims of conv kernels (``spatial_average``); the denominator is
    sqrt(v_hat)^hessian_power + eps. The Hessian-vector product differentiates the gradient,
    so the gradient's graph must exist:

    1. Explicit backward (use when you own the loop)::

           opt.zero_grad()
           loss_fn(model(x), y).backward(create_graph=True)
           opt.step()

       PyTorch warns that create_graph=True makes a reference cycle; step() breaks it by
       replacing each p.grad with its detached value.

    2. Closure (recommended: no cycle, no warning)::

           opt.step(lambda: loss_fn(model(x), y))

       The optimizer sets gradients to None, calls the closure and differentiates the returned
       loss itself with torch.autograd.grad(create_graph=True); p.grad holds the (detached)
       gradient afterwards. A closure may instead call backward(create_graph=True) itself.

    ``opt.method`` is None: AdaHessian needs no BackPACK extension (nor ``extend``);
    ``opt.create_graph`` is True.
    Defaults follow the AdaHessian paper: lr=0.15, betas=(0.9, 0.999), eps=1e-4,
    hessian_power=1. Other arguments as AdaHesScale (decoupled weight_decay, maximize,
    on_nonfinite, foreach); AdaHessian has no ``variant``: its update is the paper's.

    Raises:
        ValueError: an invalid hyperparameter, named in the message.
        HesScaleError: ``step()`` without the gradient's graph (see above).
        NonFiniteError: a gradient or D holds inf/NaN (with ``on_nonfinite='raise'``).
    """

    create_graph = True

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        hessian_power: float = 1.0,
        *,
        maximize: bool = False,
        spatial_average: bool = True,
        on_nonfinite: str = "raise",
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            maximize=maximize,
            hessian_power=hessian_power,
            on_nonfinite=on_nonfinite,
            foreach=foreach,
            spatial_average=spatial_average,
        )

    def _backward(self, loss: Tensor) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    def _diagonals(self, params: list[Tensor]) -> list[Tensor]:
        grads = [p.grad for p in params]
        for p in params:
            p.grad = p.grad.detach()  # break the parameter <-> graph reference cycle
        outputs = [i for i, g in enumerate(grads) if g.requires_grad]
        if not outputs:
            raise HesScaleError(
                "AdaHessian.step(): the gradients carry no graph, so Hessian-vector products "
                "cannot be taken. Call loss.backward(create_graph=True) before step(), or call "
                "opt.step(closure) with a closure that returns the loss."
            )
        vs = [rademacher(p.shape, p) for p in params]
        with torch.enable_grad():
            hvs = torch.autograd.grad(
                [grads[i] for i in outputs],
                params,
                grad_outputs=[vs[i] for i in outputs],
                allow_unused=True,
            )
        average = {id(p): g["spatial_average"] for g in self.param_groups for p in g["params"]}
        diagonals = []
        for p, v, hv in zip(params, vs, hvs, strict=True):
            d = torch.zeros_like(p) if hv is None else (v * hv).abs()
            diagonals.append(spatial_average(d) if average[id(p)] else d)
        return diagonals
