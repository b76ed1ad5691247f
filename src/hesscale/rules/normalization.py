"""Normalisation layers.

- Batch normalisation in evaluation mode, an affine map per channel (dim 1):
  z = gamma * x_hat + beta with x_hat = (x - running_mean) / sqrt(running_var + eps).
- Standardization with the statistics of the entries themselves (BatchNorm in train mode,
  LayerNorm, GroupNorm, InstanceNorm), one operation whose full Jacobian couples the entries
  of each group: ``standardization_input``, in closed form, O(n) per group of n entries.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from hesscale.rules.precision import promote, upcast


def _per_channel(values: Tensor, ndim: int) -> Tensor:
    return values.view(1, -1, *([1] * (ndim - 2)))


def _sum_except_channel(t: Tensor) -> Tensor:
    return t.sum([d for d in range(t.dim()) if d != 1])


def batchnorm_eval_input(
    h_out: Tensor, running_var: Tensor, eps: float, weight: Tensor | None
) -> Tensor:
    """h_x = h_z * gamma^2 / (running_var + eps)."""
    h_out, running_var, weight = promote(h_out, running_var, weight)
    scale = 1.0 / (running_var + eps)
    if weight is not None:
        scale = scale * weight.square()
    return h_out * _per_channel(scale, h_out.dim())


def batchnorm_eval_normalized(
    x: Tensor, running_mean: Tensor, running_var: Tensor, eps: float
) -> Tensor:
    """x_hat = (x - running_mean) / sqrt(running_var + eps)."""
    x, running_mean, running_var = promote(x, running_mean, running_var)
    return (x - _per_channel(running_mean, x.dim())) / _per_channel(
        (running_var + eps).sqrt(), x.dim()
    )


def batchnorm_weight(h_out: Tensor, x_hat: Tensor) -> Tensor:
    """h_gamma = sum over batch and space of h_z * x_hat^2."""
    h_out, x_hat = promote(h_out, x_hat)
    return _sum_except_channel(h_out * x_hat.square())


def batchnorm_bias(h_out: Tensor) -> Tensor:
    """h_beta = sum over batch and space of h_z."""
    return _sum_except_channel(upcast(h_out))


# Standardization with the statistics of the current entries (BatchNorm in train mode,
# LayerNorm, GroupNorm, InstanceNorm) ------------------------------------------------------


def standardized(x: Tensor, mean: Tensor, invstd: Tensor) -> Tensor:
    """y = (x - mean) * invstd, the statistics broadcast over each group's entries."""
    return (x - mean).mul_(invstd)


class Standardization(NamedTuple):
    """What ``standardization_input`` returns: the diagonal w.r.t. x, and the group sums
    sum h_z y^2 and sum h_z (size 1 along the group's dims; None when h_z is), which are the
    diagonals of a gain and a shift per group (BatchNorm's weight and bias)."""

    input: Tensor | None
    gain: Tensor | None
    shift: Tensor | None


def standardization_input(
    h_out: Tensor | None,
    g_out: Tensor | None,
    y: Tensor,
    invstd: Tensor,
    dims: tuple[int, ...],
    gain: Tensor | None = None,
) -> Standardization:
    """The diagonal w.r.t. x of z = gain * y, y = (x - mean(x)) / sqrt(var(x) + eps), where
    mean and (biased) var run over each group of n entries, the entries that share their index
    outside ``dims``. ``invstd`` = r = 1 / sqrt(var + eps) and ``gain`` (None: 1) are per group
    (broadcastable, size 1 along ``dims``); a gain that varies within a group (LayerNorm's
    weight) is applied by the caller: h_z * gain^2 and g_z * gain.

    Within a group, dy_k / dx_i = r (delta_ki - (1 + y_k y_i) / n), so with the group sums
    S_p = sum_k h_k y_k^p and G_p = sum_k g_k y_k^p (h, g w.r.t. y) and no Jacobian formed:

        diag(J^T diag(h) J)_i = r^2 [h_i (1 - 2 (1 + y_i^2) / n)
                                     + (S_0 + 2 y_i S_1 + y_i^2 S_2) / n^2],
        sum_k g_k d^2 y_k / dx_i^2 = -(r^2 / n) [2 y_i (g_i - G_0 / n)
                                                 + G_1 (1 - (1 + 3 y_i^2) / n)].

    With h' = gain^2 h and g' = gain g, their sum is
    (r^2 / n^2) [a0 + y (a1 + y (a2 - 2n h') - 2n g') + (n^2 - 2n) h'], where the per-group
    a0 = S_0' - (n - 1) G_1', a1 = 2 (S_1' + G_0'), a2 = S_2' + 3 G_1' (the sums of h', g'),
    evaluated in that order (few passes, and one new full-size tensor besides the products h y
    and g y: on the CPU every fresh large allocation costs page faults). Either of h_out, g_out
    may be None (zero).
    """
    if h_out is None and g_out is None:
        return Standardization(None, None, None)
    n = 1
    for d in dims:
        n *= y.shape[d]
    gain2 = None if gain is None else gain.square()
    a0 = a1 = a2 = s0 = s2 = None
    if h_out is not None:
        result = h_out * y
        s1 = result.sum(dims, keepdim=True)
        s2 = result.mul_(y).sum(dims, keepdim=True)
        s0 = h_out.sum(dims, keepdim=True)
        a0, a1, a2 = (s0, s1 * 2, s2) if gain2 is None else (s0 * gain2, s1 * 2 * gain2, s2 * gain2)
    if g_out is not None:
        gy = g_out * y
        g1, g0 = gy.sum(dims, keepdim=True), g_out.sum(dims, keepdim=True)
        if gain is not None:
            g1, g0 = g1 * gain, g0 * gain
        a0, a1, a2 = _plus(a0, g1, 1 - n), _plus(a1, g0, 2), _plus(a2, g1, 3)
        if h_out is None:
            result = gy
    if h_out is not None:
        _add_scaled(a2, h_out, gain2, -2 * n, out=result)  # a2 - 2n h'
    else:
        result.copy_(a2)
    result.mul_(y).add_(a1)
    if g_out is not None:
        _add_scaled(result, g_out, gain, -2 * n, out=result)
    result.mul_(y).add_(a0)
    if h_out is not None:
        _add_scaled(result, h_out, gain2, n * n - 2 * n, out=result)
    result.mul_(invstd.div(n).square_())
    if g_out is None:
        result = _without_rounding_below_zero(result, h_out, dims)
    return Standardization(result, s2, s0)


def _without_rounding_below_zero(result: Tensor, h_out: Tensor, dims: tuple[int, ...]) -> Tensor:
    """diag(J^T diag(h) J) alone is a sum of non-negative terms in every group whose h >= 0,
    but the closed form above cancels (to exactly 0 for a group of two entries, whose y are
    +-1): rounding can leave entries slightly below 0, e.g. -1e-10 in float32. Those groups'
    entries are raised to 0, so that HesScaleGN stays >= 0 where h does; groups holding a
    negative h are left as they are."""
    floor = torch.where(h_out.amin(dims, keepdim=True) >= 0, 0.0, -math.inf)
    return torch.maximum(result, floor.to(result.dtype), out=result)


def _plus(total: Tensor | None, t: Tensor, c: float) -> Tensor:
    """total + c t (total None: c t)."""
    return t * c if total is None else torch.add(total, t, alpha=c)


def _add_scaled(base: Tensor, t: Tensor, factor: Tensor | None, c: float, out: Tensor) -> Tensor:
    """base + c * factor * t into ``out`` (factor None: 1)."""
    if factor is None:
        return torch.add(base, t, alpha=c, out=out)
    return torch.addcmul(base, t, factor, value=c, out=out)


def affine_weight(h_out: Tensor, y: Tensor, dims: tuple[int, ...]) -> Tensor:
    """z = w * y + b with w broadcast over ``dims``: h_w = sum over ``dims`` of h_z * y^2."""
    return _sum(h_out * y.square(), dims)


def affine_bias(h_out: Tensor, dims: tuple[int, ...]) -> Tensor:
    """z = w * y + b with b broadcast over ``dims``: h_b = sum over ``dims`` of h_z."""
    return _sum(h_out, dims)


def _sum(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    return t.sum(dims) if dims else t  # (torch sums everything over an empty tuple)
