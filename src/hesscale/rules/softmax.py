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
log-softmax takes 1 - p_i from ``complement``, exact also for a confident prediction.
"""

from __future__ import annotations

from torch import Tensor

from hesscale.rules.precision import promote


def softmax_input(
    probs: Tensor, h_out: Tensor | None, g_out: Tensor | None, dim: int
) -> Tensor | None:
    """Diagonal w.r.t. the input of softmax; ``probs`` is the softmax output. ``h_out`` or
    ``g_out`` may be None (zero)."""
    probs, h_out, g_out = promote(probs, h_out, g_out)
    h_in = None
    if h_out is not None:
        p2 = probs.square()
        weighted = p2 * h_out
        others = weighted.sum(dim, keepdim=True) - weighted
        h_in = p2 * ((1 - probs).square() * h_out + others)
    if g_out is not None:
        s = (probs * g_out).sum(dim, keepdim=True)
        curvature = probs * (1 - 2 * probs) * (g_out - s)
        h_in = curvature if h_in is None else h_in.add_(curvature)
    return h_in


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


def complement(probs: Tensor, dim: int) -> Tensor:
    """1 - p for probabilities along ``dim``, accurate also for a confident prediction: at the
    largest p (the only one that can be near 1, where 1 - p keeps few of the dtype's digits)
    it is the sum of the other, small, p_j, which carry their full relative precision."""
    top = probs.argmax(dim, keepdim=True)
    rest = probs.scatter(dim, top, 0).sum(dim, keepdim=True)
    return (1 - probs).scatter_(dim, top, rest)
