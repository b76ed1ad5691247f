"""The Adam-style update shared by every optimizer in hesscale.optim: the single home of its math.

With g the gradient (negated for ``maximize``) and h a Hessian-diagonal estimate, at step t:

    m = beta1 * m + (1 - beta1) * g                     m_hat = m / (1 - beta1^t)
    v = beta2 * v + (1 - beta2) * c(h)                  v_hat = v / (1 - beta2^t)
    r = m_hat / (D + eps),  D = d(v_hat)^power          (a Newton-like step, per coordinate)
    or, with a floor, D = max(d(v_hat)^power, floor * sqrt(w_hat)),
        w = beta2 * w + (1 - beta2) * g^2,  w_hat = w / (1 - beta2^t)
    u = lr * clamp(r, -clip, clip)                      (no clamp when clip is None)
    p = p * (1 - lr * weight_decay) - s * u             (decoupled weight decay, as AdamW)

The preconditioner chooses c and d:

    'adam'    c(h) = h^2   d(v_hat) = sqrt(v_hat)      (v_hat tracks h^2, so d ~ |h|)
    'sqrt'    c(h) = |h|   d(v_hat) = sqrt(v_hat)      (d ~ |h|^(1/2))
    'newton'  c(h) = |h|   d(v_hat) = v_hat            (d ~ |h|)

The floor ties the curvature to the gradient's scale: where |h| is small beside the gradient's
root mean square (w_hat is Adam's second moment), the step is at most Adam's, lr * m_hat /
sqrt(w_hat) / floor; where the curvature is large, the Newton-like step is smaller than Adam's.

The clip bounds each coordinate's step by lr * clip, as Adam's is bounded by about lr, and as
Sophia (Liu et al. 2023) does: where the curvature estimate is near zero (a flat or noisy
direction, an embedding row of a token absent from recent batches), r would be huge.

s is 1 unless the trust region is on (``delta`` given). Then, over the parameters of one param
group, s = min(max_scale, sqrt(2 * delta / sum(k_hat * u^2))), with k_hat the curvature estimate
|h| the preconditioner tracks (sqrt(v_hat) for 'adam', v_hat for 'sqrt' and 'newton'): the
step's predicted change of the loss under the diagonal quadratic model, 0.5 * sum(k_hat *
(s u)^2), is then at most delta, and the step is never scaled up by more than max_scale.

``group_step`` runs on all parameters of a group at once with torch's ``_foreach`` operations
(as torch.optim.Adam(foreach=True) does), per device and dtype; ``foreach=False`` runs the same
arithmetic one parameter at a time. The bias corrections are applied as scalars, and m_hat,
v_hat and u are not stored unless needed.

Sophia (``sophia_group_step``), with h the diagonal, no bias correction and v an average of h
itself: m = beta1 m + (1 - beta1) g, v = beta2 v + (1 - beta2) h,
p = p (1 - lr wd) - lr * clamp(m / max(rho v, eps), -1, 1).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

from hesscale.internals import multi_tensor

PRECONDITIONERS = ("adam", "sqrt", "newton")


def _init_state(state: dict, like: Tensor, floor: float | None = None) -> None:
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(like, memory_format=torch.preserve_format)
        state["exp_curvature"] = torch.zeros_like(like, memory_format=torch.preserve_format)
    if floor is not None and "exp_avg_sq" not in state:
        state["exp_avg_sq"] = torch.zeros_like(like, memory_format=torch.preserve_format)


def _buckets(params: list[Tensor], foreach: bool | None) -> list[list[int]]:
    """Indices of the parameters updated together: one bucket per (device, dtype) unless
    ``foreach`` is False (then one parameter per bucket)."""
    if foreach is False:
        return [[i] for i in range(len(params))]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        groups[(p.device, p.dtype)].append(i)
    return list(groups.values())


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
    clip: float | None = None,
    floor: float | None = None,
    foreach: bool | None = None,
) -> None:
    """One update of the parameters of one param group, and of their ``states``, in place.

    ``grads`` are the gradients g (already negated for ``maximize``), ``diagonals`` the h."""
    if not params:
        return
    for p, state in zip(params, states, strict=True):
        _init_state(state, p, floor)
        state["step"] += 1
    pending: list[tuple[list[Tensor], list[Tensor], list[Tensor]]] = []  # (p, u, k_hat) lists
    for bucket in _buckets(params, foreach):
        ps = [params[i] for i in bucket]
        gs = [grads[i] for i in bucket]
        hs = [diagonals[i] for i in bucket]
        ms = [states[i]["exp_avg"] for i in bucket]
        vs = [states[i]["exp_curvature"] for i in bucket]
        steps = [states[i]["step"] for i in bucket]
        bias1 = [1 - beta1**t for t in steps]
        bias2 = [1 - beta2**t for t in steps]
        multi_tensor.lerp_(ms, gs, 1 - beta1)  # m + (1 - beta1) (g - m)
        multi_tensor.mul_(vs, beta2)
        if preconditioner == "adam":
            multi_tensor.addcmul_(vs, hs, hs, value=1 - beta2)
        else:
            multi_tensor.add_(vs, multi_tensor.abs(hs), alpha=1 - beta2)
        ws = None
        if floor is not None:  # w, the average of g^2
            ws = [states[i]["exp_avg_sq"] for i in bucket]
            multi_tensor.mul_(ws, beta2)
            multi_tensor.addcmul_(ws, gs, gs, value=1 - beta2)
        # D = d(v_hat)^power = D_raw / s with D_raw = (sqrt(v) or v)^power and s the bias
        # correction's share, (sqrt(bias2) or bias2)^power; then m_hat / (D + eps) =
        # (s / bias1) * m / (D_raw + eps * s), which saves a pass over the tensors
        root = preconditioner != "newton"
        s = [(math.sqrt(b) if root else b) ** power for b in bias2]
        if ws is not None and root and power == 1.0:
            # max(sqrt(v), floor sqrt(w)) = sqrt(max(v, floor^2 w)): one square root
            floored = ws if floor == 1.0 else multi_tensor.mul(ws, floor**2)
            denom = multi_tensor.maximum(vs, floored)
            multi_tensor.sqrt_(denom)
        else:
            denom = multi_tensor.sqrt(vs) if root else [v.clone() for v in vs]
            if power != 1.0:
                multi_tensor.pow_(denom, power)
            if ws is not None:  # D = max(D, floor * sqrt(w_hat)), times s
                gradient_scale = multi_tensor.sqrt(ws)
                multi_tensor.mul_(
                    gradient_scale,
                    [floor * f / math.sqrt(b) for f, b in zip(s, bias2, strict=True)],
                )
                multi_tensor.maximum_(denom, gradient_scale)
        multi_tensor.add_(denom, [eps * f for f in s])
        if weight_decay != 0:
            multi_tensor.mul_(ps, 1 - lr * weight_decay)
        if clip is None and delta is None:
            factors = [-lr * f / b for f, b in zip(s, bias1, strict=True)]
            multi_tensor.addcdiv_(ps, ms, denom, factors)  # p -= u
            continue
        us = multi_tensor.div(ms, denom)
        multi_tensor.mul_(us, [f / b for f, b in zip(s, bias1, strict=True)])  # r
        if clip is not None:
            multi_tensor.clamp_min_(us, -clip)
            multi_tensor.clamp_max_(us, clip)
        multi_tensor.mul_(us, lr)
        if delta is None:
            multi_tensor.sub_(ps, us)
        else:
            k_hats = [
                curvature_estimate(v, b, preconditioner) for v, b in zip(vs, bias2, strict=True)
            ]
            pending.append((ps, us, k_hats))
    if pending:
        scale = trust_region_scale(
            [u for _, us, _ in pending for u in us],
            [k for _, _, ks in pending for k in ks],
            delta,
            max_scale,
        )
        for ps, us, _ in pending:
            for p, u in zip(ps, us, strict=True):
                p.addcmul_(u, scale.to(u.device), value=-1)  # p -= s * u


def curvature_estimate(v: Tensor, bias2: float, preconditioner: str) -> Tensor:
    """k_hat, the estimate of |h| held in v_hat = v / bias2: sqrt(v_hat) for 'adam', v_hat
    otherwise."""
    return v.div(bias2).sqrt_() if preconditioner == "adam" else v.div(bias2)


def trust_region_scale(
    us: list[Tensor], k_hats: list[Tensor], delta: float, max_scale: float
) -> Tensor:
    """s = min(max_scale, sqrt(2 * delta / sum(k_hat * u^2))); max_scale when the sum is 0."""
    device = us[0].device
    quadratic = sum((k * u).mul_(u).sum().to(device) for k, u in zip(k_hats, us, strict=True))
    return torch.as_tensor(2 * delta / quadratic).sqrt().clamp(max=max_scale)


def sophia_group_step(
    params: list[Tensor],
    grads: list[Tensor],
    diagonals: list[Tensor],
    states: list[dict],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    rho: float,
    eps: float,
    weight_decay: float,
    foreach: bool | None = None,
) -> None:
    """One Sophia update (module docstring) of one param group, in place."""
    for p, state in zip(params, states, strict=True):
        _init_state(state, p)
        state["step"] += 1
    for bucket in _buckets(params, foreach):
        ps = [params[i] for i in bucket]
        ms = [states[i]["exp_avg"] for i in bucket]
        vs = [states[i]["exp_curvature"] for i in bucket]
        multi_tensor.lerp_(ms, [grads[i] for i in bucket], 1 - beta1)
        multi_tensor.lerp_(vs, [diagonals[i] for i in bucket], 1 - beta2)
        denom = multi_tensor.mul(vs, rho)
        multi_tensor.clamp_min_(denom, eps)
        ratio = multi_tensor.div(ms, denom)
        multi_tensor.clamp_min_(ratio, -1.0)
        multi_tensor.clamp_max_(ratio, 1.0)
        if weight_decay != 0:
            multi_tensor.mul_(ps, 1 - lr * weight_decay)
        multi_tensor.add_(ps, ratio, alpha=-lr)
