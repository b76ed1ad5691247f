"""Softmax and LogSoftmax along one dimension, with their full Jacobian.

With p = softmax(x) along ``dim`` and sums running over that dimension:

softmax, z = p, dz_k/dx_i = p_k (d_ki - p_i):
    diag(J^T D J)_i = p_i^2 (1 - p_i)^2 D_i + p_i^2 sum_{k != i} p_k^2 D_k
    sum_k g_k d^2 z_k/dx_i^2 = p_i (1 - p_i)^2 g_i + p_i^2 (s - p_i g_i) - p_i (1 - p_i) s
                             = p_i (1 - 2 p_i) (g_i - s),   with s = sum_k p_k g_k.

log-softmax, z = x - logsumexp(x), dz_k/dx_i = d_ki - p_i:
    diag(J^T D J)_i = (1 - p_i)^2 D_i + p_i^2 sum_{k != i} D_k
    sum_k g_k d^2 z_k/dx_i^2 = -p_i (1 - p_i) sum_k g_k.

The first terms are computed as written, sums of non-negative terms for D >= 0 (the sum over
k != i as the full sum minus term i, which rounding cannot make negative): so HesScaleGN's
diagonal stays >= 0 in floating point, where (1 - 2 p_i) D_i + p_i^2 sum_k D_k cancels.

1 - p_i is taken from ``complement``, never as 1 - p_i for a confident class (p_i near 1, where
it cancels: float32 gives 0 for a logit gap of 17, where p_i (1 - p_i) is 4e-8), and
g_i - s as (g_i - g_m) - sum_k p_k (g_k - g_m), m the class with p_m > 1/2 (the same number, as
the p_k sum to 1, without the cancellation of g_m - s when p_m is near 1; groups without such
a class are not shifted: no p is near 1 there).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesscale.rules.precision import promote


def dominant_mask(probs: Tensor) -> Tensor:
    """1 where p > 1/2 (at most one entry per group, as the p sum to 1), else 0, in the dtype of
    ``probs``. A mask of numbers rather than booleans: on the CPU, arithmetic with it is several
    times faster than torch.where or masked_fill with a boolean mask, and a product with it is
    exact (a factor 0 or 1)."""
    return torch.gt(probs, 0.5, out=torch.empty_like(probs))


def complement(probs: Tensor, dim: int | tuple[int, ...], dominant: Tensor | None = None) -> Tensor:
    """1 - p_i for probabilities ``probs`` that sum to 1 along ``dim``, without cancellation:
    for the (at most one) entry above 1/2 of each group, the sum of the group's other entries
    (each exact to its own precision); for the others 1 - p_i itself (at least 1/2, exact).
    Selected as (1 - p)(1 - d) + others * d with d = ``dominant_mask(probs)`` (which the caller
    may pass): each product is exact and one of the two terms is exactly 0."""
    d = dominant_mask(probs) if dominant is None else dominant
    others = torch.addcmul(probs, probs, d, value=-1).sum(dim, keepdim=True)
    not_probs = torch.rsub(probs, 1)
    return not_probs.addcmul_(not_probs, d, value=-1).addcmul_(others, d)  # (1 - p)(1 - d) + ...


def centred_gradient(
    probs: Tensor, g_out: Tensor, dim: int, dominant: Tensor | None = None
) -> Tensor:
    """g_i - sum_k p_k g_k, computed as (g_i - g_m) - sum_k p_k (g_k - g_m) with m the entry
    above 1/2 of each group (equal, as the p_k sum to 1; accurate where p_m is near 1); groups
    without one are not shifted (no p_k is near 1 there, so nothing cancels beyond rounding).
    ``dominant``: ``dominant_mask(probs)``, where the caller has it already."""
    d = dominant_mask(probs) if dominant is None else dominant
    reference = (g_out * d).sum(dim, keepdim=True)  # g_m, or 0
    shifted = g_out - reference
    return shifted.sub_((probs * shifted).sum(dim, keepdim=True))


def softmax_input(
    probs: Tensor, h_out: Tensor | None, g_out: Tensor | None, dim: int
) -> Tensor | None:
    """Diagonal w.r.t. the input of softmax; ``probs`` is the softmax output. ``h_out`` or
    ``g_out`` may be None (zero). (Each term in its own function, so that its temporaries are
    freed before the next: attention's probabilities are large.)"""
    probs, h_out, g_out = promote(probs, h_out, g_out)
    dominant = dominant_mask(probs)
    h_in = None if h_out is None else _softmax_gauss_newton(probs, h_out, dim, dominant)
    if g_out is not None:
        centred = centred_gradient(probs, g_out, dim, dominant)
        factor = torch.rsub(probs, 1, alpha=2).mul_(probs)  # p (1 - 2p)
        h_in = centred.mul_(factor) if h_in is None else h_in.addcmul_(centred, factor)
    return h_in


def _softmax_gauss_newton(probs: Tensor, h_out: Tensor, dim: int, dominant: Tensor) -> Tensor:
    """p_i^2 [(1 - p_i)^2 h_i + sum_{k != i} p_k^2 h_k], in place where a fresh tensor is free
    to overwrite (fewer large allocations)."""
    p2 = probs.square()
    weighted = p2 * h_out
    total = weighted.sum(dim, keepdim=True)
    others = torch.sub(total, weighted, out=weighted)  # sum_k p_k^2 h_k - p_i^2 h_i
    return others.addcmul_(complement(probs, dim, dominant).square_(), h_out).mul_(p2)


def log_softmax_input(
    probs: Tensor, h_out: Tensor | None, g_out: Tensor | None, dim: int
) -> Tensor | None:
    """Diagonal w.r.t. the input of log-softmax; ``probs`` is exp of its output. ``h_out`` or
    ``g_out`` may be None (zero)."""
    probs, h_out, g_out = promote(probs, h_out, g_out)
    not_probs = complement(probs, dim)
    h_in = None
    if h_out is not None:
        others = h_out.sum(dim, keepdim=True) - h_out
        h_in = not_probs.square() * h_out + probs.square() * others
    if g_out is not None:
        curvature = (probs * not_probs).mul_(-g_out.sum(dim, keepdim=True))
        h_in = curvature if h_in is None else h_in.add_(curvature)
    return h_in
