"""The Adam-style update shared by every optimizer in hesscale.optim: the single home of its math.

With g the gradient (negated for ``maximize``) and h a Hessian-diagonal estimate, at step t:

    m = beta1 * m + (1 - beta1) * g                     m_hat = m / (1 - beta1^t)
    v = beta2 * v + (1 - beta2) * c(h)                  v_hat = v / (1 - beta2^t)
    u = lr * m_hat / (d(v_hat)^power + eps)
    p = p * (1 - lr * weight_decay) - s * u             (decoupled weight decay, as AdamW)

The preconditioner chooses c and d:

    'adam'    c(h) = h^2   d(v_hat) = sqrt(v_hat)      (v_hat tracks h^2, so d ~ |h|)
    'sqrt'    c(h) = |h|   d(v_hat) = sqrt(v_hat)      (d ~ |h|^(1/2))
    'newton'  c(h) = |h|   d(v_hat) = v_hat            (d ~ |h|)

s is 1 unless the trust region is on (``delta`` given). Then, over the parameters of one param
group, s = min(max_scale, sqrt(2 * delta / sum(k_hat * u^2))), with k_hat the curvature estimate
|h| the preconditioner tracks (sqrt(v_hat) for 'adam', v_hat for 'sqrt' and 'newton'): the
step's predicted change of the loss under the diagonal quadratic model, 0.5 * sum(k_hat *
(s u)^2), is then at most delta, and the step is never scaled up by more than max_scale.

For speed (as torch.optim.Adam does), the bias corrections are applied as scalars and m_hat,
v_hat and u are not stored unless needed: u = (lr / (1 - beta1^t)) * m / (d(v_hat)^power + eps)
is added to p in one fused operation when the trust region is off.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PRECONDITIONERS = ("adam", "sqrt", "newton")


def accumulate_curvature(v: Tensor, h: Tensor, beta2: float, preconditioner: str) -> None:
    """v = beta2 * v + (1 - beta2) * c(h), in place; c(h) = h^2 for 'adam', |h| otherwise."""
    v.mul_(beta2)
    if preconditioner == "adam":
        v.addcmul_(h, h, value=1 - beta2)
    else:
        v.add_(h.abs(), alpha=1 - beta2)


def denominator(v: Tensor, bias2: float, preconditioner: str, power: float, eps: float) -> Tensor:
    """d(v_hat)^power + eps, v_hat = v / bias2, as a new tensor.

    d(v_hat) = sqrt(v_hat) = sqrt(v) / sqrt(bias2) for 'adam' and 'sqrt', v_hat for 'newton'."""
    if preconditioner == "newton":
        d = v.div(bias2)
    else:
        d = v.sqrt().div_(math.sqrt(bias2))
    if power != 1.0:
        d.pow_(power)
    return d.add_(eps)


def curvature_estimate(v: Tensor, bias2: float, preconditioner: str) -> Tensor:
    """k_hat, the estimate of |h| held in v_hat = v / bias2: sqrt(v_hat) for 'adam', v_hat
    otherwise."""
    return v.div(bias2).sqrt_() if preconditioner == "adam" else v.div(bias2)


def moments_step(
    state: dict, g: Tensor, h: Tensor, *, beta1: float, beta2: float, preconditioner: str
) -> tuple[Tensor, Tensor, float, float]:
    """Advance ``state`` (keys 'step', 'exp_avg', 'exp_curvature') by one step, in place.

    Returns m, v and the bias corrections 1 - beta1^t, 1 - beta2^t."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(g, memory_format=torch.preserve_format)
        state["exp_curvature"] = torch.zeros_like(g, memory_format=torch.preserve_format)
    state["step"] += 1
    t = state["step"]
    m, v = state["exp_avg"], state["exp_curvature"]
    m.lerp_(g, 1 - beta1)  # m + (1 - beta1) * (g - m) = beta1 * m + (1 - beta1) * g
    accumulate_curvature(v, h, beta2, preconditioner)
    return m, v, 1 - beta1**t, 1 - beta2**t


def group_step(
    params: list[Tensor],
    grads: list[Tensor],
    diagonals: list[Tensor],
    states: list[dict],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    preconditioner: str,
    power: float = 1.0,
    delta: float | None = None,
    max_scale: float = 1.0,
) -> None:
    """One update of the parameters of one param group, and of their ``states``, in place.

    ``grads`` are the gradients g (already negated for ``maximize``), ``diagonals`` the h."""
    pending = []  # (p, u, k_hat), kept only while the trust region needs the whole step
    for p, g, h, state in zip(params, grads, diagonals, states, strict=True):
        m, v, bias1, bias2 = moments_step(
            state, g, h, beta1=beta1, beta2=beta2, preconditioner=preconditioner
        )
        denom = denominator(v, bias2, preconditioner, power, eps)
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        if delta is None:
            p.addcdiv_(m, denom, value=-lr / bias1)  # p -= u
        else:
            u = m.div(denom).mul_(lr / bias1)
            pending.append((p, u, curvature_estimate(v, bias2, preconditioner)))
    if pending:
        _, us, k_hats = zip(*pending, strict=True)
        scale = trust_region_scale(list(us), list(k_hats), delta, max_scale)
        for p, u, _ in pending:
            p.addcmul_(u, scale, value=-1)  # p -= s * u


def trust_region_scale(
    us: list[Tensor], k_hats: list[Tensor], delta: float, max_scale: float
) -> Tensor:
    """s = min(max_scale, sqrt(2 * delta / sum(k_hat * u^2))); max_scale when the sum is 0."""
    quadratic = sum((k * u).mul_(u).sum() for k, u in zip(k_hats, us, strict=True))
    return torch.as_tensor(2 * delta / quadratic).sqrt().clamp(max=max_scale)
