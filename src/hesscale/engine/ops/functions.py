"""Elementwise mathematical functions beyond exp / log / sqrt: trigonometric, hyperbolic, error
function and its inverse, log1p, expm1, other bases, logit, log-gamma and digamma (formulas:
rules.elementwise).

Each is z = sigma(x) entrywise: h_x = sigma'(x)^2 h_z + sigma''(x) g_z (engine.ops.common.unary).
"""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.common import unary
from hesscale.engine.registry import register
from hesscale.rules import elementwise


@register("SinBackward0")
def sin(call: NodeCall):
    return unary(call, lambda: elementwise.sin_derivatives(call.saved("self")))


@register("CosBackward0")
def cos(call: NodeCall):
    return unary(call, lambda: elementwise.cos_derivatives(call.saved("self")))


@register("TanBackward0")
def tan(call: NodeCall):
    return unary(call, lambda: elementwise.tan_derivatives_from_output(call.saved("result")))


@register("SinhBackward0")
def sinh(call: NodeCall):
    return unary(call, lambda: elementwise.sinh_derivatives(call.saved("self")))


@register("CoshBackward0")
def cosh(call: NodeCall):
    return unary(call, lambda: elementwise.cosh_derivatives(call.saved("self")))


@register("AtanBackward0")
def atan(call: NodeCall):
    return unary(call, lambda: elementwise.atan_derivatives(call.saved("self")))


@register("ErfBackward0")
def erf(call: NodeCall):
    return unary(call, lambda: elementwise.erf_derivatives(call.saved("self")))


@register("ErfcBackward0")
def erfc(call: NodeCall):
    return unary(call, lambda: elementwise.erfc_derivatives(call.saved("self")))


@register("Log1PBackward0")
def log1p(call: NodeCall):
    return unary(call, lambda: elementwise.log1p_derivatives(call.saved("self")))


@register("Log2Backward0")
def log2(call: NodeCall):
    return unary(
        call, lambda: elementwise.log_base_derivatives(call.saved("self"), elementwise.LN2)
    )


@register("Log10Backward0")
def log10(call: NodeCall):
    return unary(
        call, lambda: elementwise.log_base_derivatives(call.saved("self"), elementwise.LN10)
    )


@register("Expm1Backward0")
def expm1(call: NodeCall):
    return unary(call, lambda: elementwise.expm1_derivatives_from_output(call.saved("result")))


@register("Exp2Backward0")
def exp2(call: NodeCall):
    return unary(call, lambda: elementwise.exp2_derivatives_from_output(call.saved("result")))


@register("LogitBackward0")
def logit(call: NodeCall):
    eps = call.saved("eps")
    return unary(call, lambda: elementwise.logit_derivatives(call.saved("self"), eps))


@register("ErfinvBackward0")
def erfinv(call: NodeCall):
    return unary(call, lambda: elementwise.erfinv_derivatives(call.saved("self")))


@register("LgammaBackward0")
def lgamma(call: NodeCall):
    return unary(call, lambda: elementwise.lgamma_derivatives(call.saved("self")))


@register("DigammaBackward0")
def digamma(call: NodeCall):
    return unary(call, lambda: elementwise.digamma_derivatives(call.saved("self")))
