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
"""

from __future__ import annotations

import torch
from torch import Tensor

PRECONDITIONERS = ("adam", "sqrt", "newton")


def curvature(h: Tensor, preconditioner: str) -> Tensor:
    """c(h): what the second moment v averages; h^2 for 'adam', |h| otherwise."""
    return h.square() if preconditioner == "adam" else h.abs()


def denominator(v_hat: Tensor, preconditioner: str, power: float = 1.0) -> Tensor:
    """d(v_hat)^power: sqrt(v_hat) for 'adam' and 'sqrt', v_hat for 'newton'."""
    d = v_hat if preconditioner == "newton" else v_hat.sqrt()
    return d if power == 1.0 else d.pow(power)


def curvature_estimate(v_hat: Tensor, preconditioner: str) -> Tensor:
    """k_hat, the estimate of |h| held in v_hat: sqrt(v_hat) for 'adam', v_hat otherwise."""
    return v_hat.sqrt() if preconditioner == "adam" else v_hat


def moments_step(
    state: dict,
    g: Tensor,
    h: Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    preconditioner: str,
    power: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Advance ``state`` (keys 'step', 'exp_avg', 'exp_curvature') by one step.

    Returns u = lr * m_hat / (d(v_hat)^power + eps) and k_hat (for the trust region)."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(g, memory_format=torch.preserve_format)
        state["exp_curvature"] = torch.zeros_like(g, memory_format=torch.preserve_format)
    state["step"] += 1
    t = state["step"]
    m, v = state["exp_avg"], state["exp_curvature"]
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).add_(curvature(h, preconditioner), alpha=1 - beta2)
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    u = lr * m_hat / (denominator(v_hat, preconditioner, power) + eps)
    return u, curvature_estimate(v_hat, preconditioner)


def trust_region_scale(
    us: list[Tensor], k_hats: list[Tensor], delta: float, max_scale: float
) -> Tensor:
    """s = min(max_scale, sqrt(2 * delta / sum(k_hat * u^2))); max_scale when the sum is 0."""
    quadratic = sum((k * u.square()).sum() for k, u in zip(k_hats, us, strict=True))
    return torch.as_tensor(2 * delta / quadratic).sqrt().clamp(max=max_scale)
