"""Reductions with their own derivatives: logsumexp, max / min / median over ties, products,
variance and standard deviation, vector norms (formulas: rules.reductions).

Sums, means, and reductions that pick one entry by index (max(dim), sort, topk, cumsum, ...)
have 0/1 Jacobians: engine.ops.shape and engine.ops.arithmetic handle them.
"""

from __future__ import annotations

import math

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.common import entrywise_linear
from hesscale.engine.registry import Kind, register
from hesscale.internals import has_saved_value, saved_value
from hesscale.rules import reductions
from hesscale.rules.elementwise import elementwise_input


# Each input entry reaches one output entry, piecewise linearly (max, min, median: torch spreads
# the gradient evenly over ties, J = 1/k there) or multilinearly (prod): no diagonal curvature.
@register(
    "AmaxBackward0",
    "AminBackward0",
    "MaxBackward1",  # x.max() without dim
    "MinBackward1",
    "MedianBackward0",  # x.median() without dim
    "NanmedianBackward0",
    "ProdBackward0",
    "ProdBackward1",
    kind=Kind.ENTRYWISE_LINEAR,
)
def entrywise_reduction(call: NodeCall):
    """h_x = (J^T h_z) * (J^T 1) (engine.ops.common.entrywise_linear)."""
    return entrywise_linear(call)


def _reduced(call: NodeCall, x, dim_name: str = "dim"):
    """(reduced dimensions, keepdim) of a reduction node over ``x``."""
    dim = call.saved(dim_name) if has_saved_value(call.node, dim_name) else None
    keepdim = call.saved("keepdim") if has_saved_value(call.node, "keepdim") else False
    return reductions.reduced_dims(dim, x.dim()), keepdim


def _group_diagonal(h, g, derivatives, dims, keepdim):
    """first^2 h + second g with h and g (output shape) broadcast back over the group."""
    if h is None and g is None:
        return None
    first, second = derivatives()
    g = None if g is None else reductions.unreduce(g, dims, keepdim)
    if h is None:
        return None if isinstance(second, float) and second == 0 else second * g
    return elementwise_input(reductions.unreduce(h, dims, keepdim), g, first, second)


@register("LogsumexpBackward0")
def logsumexp(call: NodeCall):
    """z = log sum exp(x) over dims: h_x = p^2 h_z + p (1 - p) g_z, p the group's softmax."""
    x = call.saved("self")
    dims, keepdim = _reduced(call, x)
    result = reductions.unreduce(call.saved("result"), dims, keepdim)
    derivatives = lambda: reductions.logsumexp_derivatives(x, result, dims)  # noqa: E731
    return (_group_diagonal(call.h, call.g, derivatives, dims, keepdim),)


def _correction(call: NodeCall) -> float:
    correction = call.saved("correction")
    return 1 if correction is None else correction


def _variance_like(call: NodeCall, std_name: str | None):
    """Var / std (``std_name``: the saved std), and var_mean / std_mean whose second output
    is the group mean (linear: h_x gets h_mean / n^2)."""
    x = call.saved("self")
    dims, keepdim = _reduced(call, x)
    correction = _correction(call)
    if std_name is None:
        derivatives = lambda: reductions.variance_derivatives(x, dims, correction)  # noqa: E731
    else:

        def derivatives():
            std = reductions.unreduce(call.saved(std_name), dims, keepdim)
            return reductions.std_derivatives(x, std, dims, correction)

    h_x = _group_diagonal(call.h, call.g, derivatives, dims, keepdim)
    if len(call.h_out) == 2 and call.h_out[1] is not None:
        n = reductions.group_size(x.shape, dims)
        h_mean = reductions.unreduce(call.h_out[1], dims, keepdim) / (n * n)
        h_x = h_mean.expand_as(x) if h_x is None else h_x + h_mean
    return (h_x,)


@register("VarBackward0", "VarMeanBackward0")
def variance(call: NodeCall):
    """z = sum (x - m)^2 / (n - c) over dims (rules.reductions); var_mean adds its mean."""
    return _variance_like(call, None)


@register("StdBackward0")
def std(call: NodeCall):
    """z = sqrt(var) over dims (rules.reductions)."""
    return _variance_like(call, "result")


@register("StdMeanBackward0")
def std_mean(call: NodeCall):
    return _variance_like(call, "result0")


def _order(node) -> float:
    name = "ord" if has_saved_value(node, "ord") else "p"
    order = saved_value(node, name)
    return 2.0 if order is None else float(order)


def _supported_order(node) -> str | None:
    order = _order(node)
    if order == 0 or order >= 1 or math.isinf(order):
        return None
    return f"a vector norm of order {order} (supported: 0, 1, 2, any finite order >= 1, inf, -inf)"


@register(
    "LinalgVectorNormBackward0",
    "NormBackward0",
    "NormBackward1",
    "NormBackward2",
    "NormBackward3",
    check=_supported_order,
)
def vector_norm(call: NodeCall):
    """z = ||x||_p over dims (torch.linalg.vector_norm, torch.norm, F.normalize,
    F.pairwise_distance): p = inf or -inf picks the largest / smallest |x| (ties share, no
    curvature), p = 0 counts non-zeros (zero derivative), otherwise rules.reductions."""
    order = _order(call.node)
    if order == 0:
        return (None,)
    if math.isinf(order):
        return entrywise_linear(call)
    x = call.saved("self")
    dims, keepdim = _reduced(call, x)
    norm = reductions.unreduce(call.saved("result"), dims, keepdim)
    derivatives = lambda: reductions.vector_norm_derivatives(x, norm, order)  # noqa: E731
    return (_group_diagonal(call.h, call.g, derivatives, dims, keepdim),)


def _along_last(call: NodeCall, rule, *tensors):
    """Run ``rule`` on ``tensors`` with the node's ``dim`` moved last, and move it back."""
    dim = call.saved("dim")
    moved = [None if t is None else t.movedim(dim, -1) for t in tensors]
    result = rule(*moved)
    return None if result is None else result.movedim(-1, dim)


@register("CumprodBackward0")
def cumprod(call: NodeCall):
    """z_k = prod_{j <= k} x_j along dim (rules.reductions.cumprod_input)."""
    x = call.saved("self")
    if x.dim() == 0:
        return (call.h,)
    return (_along_last(call, reductions.cumprod_input, x, call.h),)


@register("LogcumsumexpBackward0")
def logcumsumexp(call: NodeCall):
    """z_k = log sum_{j <= k} exp(x_j) along dim (rules.reductions.logcumsumexp_input)."""
    x, result = call.saved("self"), call.saved("result")
    if x.dim() == 0:
        return (call.h,)
    return (_along_last(call, reductions.logcumsumexp_input, x, result, call.h, call.g),)


def _finite_order(node) -> str | None:
    p = saved_value(node, "p")
    if p == 0 or (1 <= p < math.inf):
        return None
    return (
        f"torch.cdist with p={p}: rules exist for p = 0 and finite p >= 1 (p < 1 has infinite "
        "curvature at 0, p = inf selects one coordinate per pair)"
    )


@register("CdistBackward0", check=_finite_order)
def cdist(call: NodeCall):
    """z_ab = ||x1_a - x2_b||_p (rules.reductions.pairwise_distance_inputs)."""
    x1, x2 = call.saved("x1"), call.saved("x2")
    p = call.saved("p")
    if p == 0:  # counts non-zero differences: zero derivative
        return None, None
    h_d = reductions.pairwise_distance_inputs(x1, x2, call.saved("result"), call.h, call.g, p)
    if h_d is None:
        return None, None
    return (h_d.sum(-2) if call.needs(0) else None, h_d.sum(-3) if call.needs(1) else None)
