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

from hesscale.rules.softmax import complement

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


def logsumexp_derivatives(x: Tensor, result: Tensor, dims: tuple[int, ...]) -> Derivatives:
    """z = log sum_i exp(x_i) over ``dims`` (``result`` broadcast against x): with
    p = exp(x - z), the softmax of the group, dz/dx_i = p_i and d^2z/dx_i^2 = p_i (1 - p_i)
    (1 - p_i without cancellation: rules.softmax.complement)."""
    p = torch.exp(x - result)
    return p, p * complement(p, dims)


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


def cumulative_jacobian(x: Tensor, lower: Tensor) -> Tensor:
    """(..., n, n) from (..., n): ``lower`` (..., i, k) masked to k >= i, i.e. the entries
    where input i reaches output k of a cumulative operation along the last dim."""
    n = x.shape[-1]
    reaches = torch.ones(n, n, dtype=torch.bool, device=x.device).triu_()
    return lower.masked_fill(~reaches, 0)


def cumprod_input(x: Tensor, h_out: Tensor | None) -> Tensor | None:
    """z_k = prod_{j <= k} x_j along the last dim: dz_k/dx_i = prod_{j <= k, j != i} x_j for
    k >= i (computed as products, exact where entries are 0), no curvature (each x_i enters
    each product once, linearly): h_x_i = sum_{k >= i} (dz_k/dx_i)^2 h_k. Costs n^2 per row."""
    if h_out is None:
        return None
    n = x.shape[-1]
    before = torch.cat([torch.ones_like(x[..., :1]), x[..., :-1]], -1).cumprod(-1)
    after = x.unsqueeze(-2).expand(*x.shape[:-1], n, n)  # [i, k] = x_k
    strictly_after = torch.ones(n, n, dtype=torch.bool, device=x.device).triu_(1)
    between = after.masked_fill(~strictly_after, 1).cumprod(-1)  # prod_{i < j <= k} x_j
    jacobian = cumulative_jacobian(x, before.unsqueeze(-1) * between)
    return (jacobian.square() * h_out.unsqueeze(-2)).sum(-1)


def logcumsumexp_input(
    x: Tensor, result: Tensor, h_out: Tensor | None, g_out: Tensor | None
) -> Tensor | None:
    """z_k = log sum_{j <= k} exp(x_j) along the last dim: with p_ik = exp(x_i - z_k) for
    k >= i (the softmax of the prefix up to k), dz_k/dx_i = p_ik and
    d^2z_k/dx_i^2 = p_ik (1 - p_ik): h_x_i = sum_{k >= i} p_ik^2 h_k + p_ik (1 - p_ik) g_k.
    Costs n^2 per row."""
    if h_out is None and g_out is None:
        return None
    probs = cumulative_jacobian(x, torch.exp(x.unsqueeze(-1) - result.unsqueeze(-2)))
    h_in = 0
    if h_out is not None:
        h_in = (probs.square() * h_out.unsqueeze(-2)).sum(-1)
    if g_out is not None:
        h_in = h_in + (probs * (1 - probs) * g_out.unsqueeze(-2)).sum(-1)
    return h_in


def pairwise_distance_inputs(
    x1: Tensor, x2: Tensor, dist: Tensor, h_out: Tensor | None, g_out: Tensor | None, p: float
) -> Tensor | None:
    """z_ab = ||x1_a - x2_b||_p (torch.cdist; rows a of x1 (..., P, M), b of x2 (..., R, M)):
    the vector norm of d_ab = x1_a - x2_b (vector_norm_derivatives), with dd/dx1 = 1 and
    dd/dx2 = -1, so both inputs receive the same per-pair diagonal, summed over the other's
    rows: returns h_d of shape (..., P, R, M). Costs P R M, like a naive cdist."""
    if h_out is None and g_out is None:
        return None
    d = x1.unsqueeze(-2) - x2.unsqueeze(-3)
    first, second = vector_norm_derivatives(d, dist.unsqueeze(-1), p)
    h_d = 0
    if h_out is not None:
        h_d = first.square() * h_out.unsqueeze(-1)
    if g_out is not None and not (isinstance(second, float) and second == 0):
        h_d = h_d + second * g_out.unsqueeze(-1)
    return h_d if isinstance(h_d, Tensor) else None
