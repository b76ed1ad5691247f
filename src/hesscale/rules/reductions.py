"""Reductions z = f(x_1, ..., x_n) over some dimensions: logsumexp, variance, standard
deviation, vector norms.

Each input entry reaches exactly one output entry (the one of its group), so with the output's
h and g broadcast back over the reduced dimensions,

    h_x = (dz/dx)^2 h_z + (d^2 z / dx^2) g_z,

the full Jacobian (a row per group) entering through (dz/dx)^2. Each function returns the pair
(dz/dx, d^2 z/dx^2) in the input's shape, or broadcastable to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Derivatives = tuple[Tensor, Tensor]


def reduced_dims(dim: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """The reduced dimensions, non-negative and sorted (None or () reduce all of them)."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not dims:
        return tuple(range(ndim))
    return tuple(sorted(d % max(ndim, 1) for d in dims))


def unreduce(t: Tensor, dims: tuple[int, ...], keepdim: bool) -> Tensor:
    """A reduced tensor (output shape) with its reduced dimensions back as size 1, so that it
    broadcasts against the input."""
    if keepdim:
        return t
    for d in dims:
        t = t.unsqueeze(d)
    return t


def group_size(shape: Sequence[int], dims: tuple[int, ...]) -> int:
    """How many input entries each output entry reduces."""
    n = 1
    for d in dims:
        n *= shape[d]
    return n


def logsumexp_derivatives(x: Tensor, result: Tensor) -> Derivatives:
    """z = log sum_i exp(x_i) (``result`` broadcast against x): with p = exp(x - z), the
    softmax of the group, dz/dx_i = p_i and d^2z/dx_i^2 = p_i (1 - p_i)."""
    p = torch.exp(x - result)
    return p, p - p.square()


def variance_derivatives(x: Tensor, dims: tuple[int, ...], correction: float) -> Derivatives:
    """z = sum_i (x_i - m)^2 / (n - c), m the group mean, n its size, c the correction:
    dz/dx_i = 2 (x_i - m) / (n - c), d^2z/dx_i^2 = 2 (1 - 1/n) / (n - c)."""
    n = group_size(x.shape, dims)
    centred = x - x.mean(dims, keepdim=True)
    denominator = n - correction
    return (2 / denominator) * centred, torch.full_like(centred, 2 * (1 - 1 / n) / denominator)


def std_derivatives(
    x: Tensor, std: Tensor, dims: tuple[int, ...], correction: float
) -> Derivatives:
    """z = s = sqrt(variance) (``std`` broadcast against x), d = n - c:
    dz/dx_i = (x_i - m) / (d s), d^2z/dx_i^2 = (1 - 1/n) / (d s) - (x_i - m)^2 / (d^2 s^3)."""
    n = group_size(x.shape, dims)
    centred = x - x.mean(dims, keepdim=True)
    d_s = (n - correction) * std
    first = centred / d_s
    return first, (1 - 1 / n) / d_s - first.square() / std


def vector_norm_derivatives(x: Tensor, norm: Tensor, order: float) -> Derivatives:
    """z = (sum_i |x_i|^p)^(1/p) for a finite p >= 1 (``norm`` broadcast against x), a = |x|:
    dz/dx_i = sign(x_i) a_i^(p-1) z^(1-p),
    d^2z/dx_i^2 = (p - 1) a_i^(p-2) z^(1-p) (1 - (a_i / z)^p)
    (p = 2: x_i / z and (1 - x_i^2 / z^2) / z; p = 1: sign(x_i) and 0). Where z = 0 both are 0,
    as torch's gradient (the norm is not differentiable there)."""
    if order == 1:
        return torch.sign(x), 0.0
    safe = torch.where(norm == 0, 1.0, norm)
    if order == 2:
        first = x / safe
        second = (1 - first.square()) / safe
    else:
        a = x.abs()
        scaled = a / safe
        first = torch.sign(x) * scaled.pow(order - 1)
        second = (order - 1) * scaled.pow(order - 2) * (1 - scaled.pow(order)) / safe
    zero = norm == 0
    return first.masked_fill(zero, 0), second.masked_fill(zero, 0)
