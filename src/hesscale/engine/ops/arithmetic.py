"""Arithmetic on tensors: +, -, *, /, powers, exp, log, sqrt, abs, clamp, mean, where, ..."""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.common import scaled, unary
from hesscale.engine.registry import register
from hesscale.internals import apply_backward
from hesscale.rules import arithmetic, elementwise


@register("AddBackward0", "SubBackward0")
def add(call: NodeCall):
    """z = x + alpha y (or x - alpha y): h_x = h_z, h_y = alpha^2 h_z."""
    return call.h, scaled(call.h, call.saved("alpha"))


@register("AddBackward1", "SubBackward1", "NegBackward0")
def pass_through(call: NodeCall):
    """z = x + c, x - c or -x: h_x = h_z."""
    return (call.h,)


@register("RsubBackward0")
def rsub(call: NodeCall):
    """z = y - alpha x (torch.rsub(x, y)): h_x = alpha^2 h_z, h_y = h_z."""
    return scaled(call.h, call.saved("alpha")), call.h


@register("RsubBackward1")
def rsub_scalar(call: NodeCall):
    """z = c - alpha x: h_x = alpha^2 h_z."""
    return (scaled(call.h, call.saved("alpha")),)


@register("MulBackward0")
def mul(call: NodeCall):
    """z = x * y: h_x = y^2 h_z, h_y = x^2 h_z (bilinear: no own curvature per input)."""
    h = call.h
    if h is None:
        return None, None
    return (
        arithmetic.product_factor(h, call.saved("other")) if call.needs(0) else None,
        arithmetic.product_factor(h, call.saved("self")) if call.needs(1) else None,
    )


@register("MulBackward1")
def mul_scalar(call: NodeCall):
    """z = c x: h_x = c^2 h_z."""
    return (scaled(call.h, call.saved("other")),)


@register("DivBackward0")
def div(call: NodeCall):
    """z = x / y: h_x = h_z / y^2, h_y = (z / y)^2 h_z + 2 z / y^2 g_z."""
    h, g = call.h, call.g
    other = call.saved("other")
    h_x = None if h is None or not call.needs(0) else arithmetic.quotient_numerator(h, other)
    h_y = None
    if call.needs(1) and (h is not None or g is not None):
        h_y = arithmetic.quotient_denominator(h, g, call.saved("self") / other, other)
    return h_x, h_y


@register("DivBackward1")
def div_scalar(call: NodeCall):
    """z = x / c: h_x = h_z / c^2."""
    return (scaled(call.h, 1 / call.saved("other")),)


@register("PowBackward0")
def pow_scalar(call: NodeCall):
    """z = x^p for a number p."""
    exponent = call.saved("exponent")
    return unary(call, lambda: elementwise.power_derivatives(call.saved("self"), exponent))


@register("ExpBackward0")
def exp(call: NodeCall):
    return unary(call, lambda: elementwise.exp_derivatives_from_output(call.saved("result")))


@register("LogBackward0")
def log(call: NodeCall):
    return unary(call, lambda: elementwise.log_derivatives(call.saved("self")))


@register("SqrtBackward0")
def sqrt(call: NodeCall):
    return unary(call, lambda: elementwise.sqrt_derivatives_from_output(call.saved("result")))


@register("RsqrtBackward0")
def rsqrt(call: NodeCall):
    return unary(call, lambda: elementwise.rsqrt_derivatives_from_output(call.saved("result")))


@register("ReciprocalBackward0")
def reciprocal(call: NodeCall):
    return unary(call, lambda: elementwise.reciprocal_derivatives_from_output(call.saved("result")))


@register("AbsBackward0")
def abs_(call: NodeCall):
    return unary(call, lambda: elementwise.abs_derivatives(call.saved("self")))


@register("MeanBackward0", "MeanBackward1")
def mean(call: NodeCall):
    """z = sum(x) / n over the reduced entries: h_x = h_z / n^2 (broadcast back)."""
    h = call.h
    if h is None:
        return (None,)
    spread = apply_backward(call.node, h)[0]  # h_z / n in the input's shape
    n = call.saved("self_sym_numel") // max(h.numel(), 1)
    return (spread / n,)


@register(
    "WhereBackward0",
    "MaskedFillBackward0",
    "MaskedFillBackward1",
    "ClampBackward0",
    "ClampBackward1",
    "ClampMinBackward0",
    "ClampMaxBackward0",
    "HardtanhBackward0",
)
def select_entries(call: NodeCall):
    """Each output entry is one input entry or a constant (where, masked_fill, clamp and
    hardtanh with their bounds): J holds zeros and ones and there is no curvature, so
    h = J^T h_z, the node's own backward formula applied to h_z."""
    if call.h is None:
        return (None,) * len(call.grad_in)
    return apply_backward(call.node, call.h)
