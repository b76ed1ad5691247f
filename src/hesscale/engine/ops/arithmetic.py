"""Arithmetic on tensors: +, -, *, /, powers, exp, log, sqrt, abs, clamp, mean, where, ..."""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.common import backward_formula, entrywise_linear, scaled, unary
from hesscale.engine.registry import Kind, register
from hesscale.rules import arithmetic, elementwise
from hesscale.rules.elementwise import elementwise_input

# sums, differences, scalings: entrywise linear, and what a loss does to combine its terms
COMBINES_LINEARLY = Kind.ENTRYWISE_LINEAR | Kind.LOSS_COMBINER


@register("AddBackward0", "SubBackward0", kind=COMBINES_LINEARLY)
def add(call: NodeCall):
    """z = x + alpha y (or x - alpha y): h_x = h_z, h_y = alpha^2 h_z."""
    return call.h, scaled(call.h, call.saved("alpha"))


@register("AddBackward1", "SubBackward1", "NegBackward0", kind=COMBINES_LINEARLY)
def pass_through(call: NodeCall):
    """z = x + c, x - c or -x: h_x = h_z."""
    return (call.h,)


@register("RsubBackward0", kind=COMBINES_LINEARLY)
def rsub(call: NodeCall):
    """z = y - alpha x (torch.rsub(x, y)): h_x = alpha^2 h_z, h_y = h_z."""
    return scaled(call.h, call.saved("alpha")), call.h


@register("RsubBackward1", kind=COMBINES_LINEARLY)
def rsub_scalar(call: NodeCall):
    """z = c - alpha x: h_x = alpha^2 h_z."""
    return (scaled(call.h, call.saved("alpha")),)


@register("MulBackward0", kind=COMBINES_LINEARLY | Kind.COMPLEX_READY)
def mul(call: NodeCall):
    """z = x * y: h_x = y^2 h_z, h_y = x^2 h_z (bilinear: no own curvature per input); for a
    complex z, per real and imaginary part (rules.arithmetic.complex_product_factor)."""
    h = call.h
    if h is None:
        return None, None
    factors = (call.saved("other"), call.saved("self"))
    if h.is_complex():
        return tuple(
            arithmetic.complex_product_factor(h, factor, call.grad_in[i].is_complex())
            if call.needs(i)
            else None
            for i, factor in enumerate(factors)
        )
    return tuple(
        arithmetic.product_factor(h, factor) if call.needs(i) else None
        for i, factor in enumerate(factors)
    )


@register("MulBackward1", kind=COMBINES_LINEARLY)
def mul_scalar(call: NodeCall):
    """z = c x: h_x = c^2 h_z."""
    return (scaled(call.h, call.saved("other")),)


@register("DivBackward0", kind=Kind.LINEAR_IN_FIRST | Kind.LOSS_COMBINER)
def div(call: NodeCall):
    """z = x / y: h_x = h_z / y^2, h_y = (z / y)^2 h_z + 2 z / y^2 g_z."""
    h, g = call.h, call.g
    other = call.saved("other")
    h_x = None if h is None or not call.needs(0) else arithmetic.quotient_numerator(h, other)
    h_y = None
    if call.needs(1) and (h is not None or g is not None):
        h_y = arithmetic.quotient_denominator(h, g, call.saved("self") / other, other)
    return h_x, h_y


@register("DivBackward1", kind=COMBINES_LINEARLY)
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


@register("AbsBackward0", kind=Kind.LOSS)  # F.l1_loss: mean(abs(x - y)), no kernel of its own
def abs_(call: NodeCall):
    return unary(call, lambda: elementwise.abs_derivatives(call.saved("self")))


@register("MeanBackward0", "MeanBackward1", kind=Kind.LOSS_COMBINER, family="reductions")
def mean(call: NodeCall):
    """z = sum(x) / n over the reduced entries: h_x = h_z / n^2 (broadcast back)."""
    h = call.h
    if h is None:
        return (None,)
    spread = backward_formula(call.node, h)[0]  # h_z / n in the input's shape
    n = call.saved("self_sym_numel") // max(h.numel(), 1)
    return (spread / n,)


@register(
    "WhereBackward0",
    "ClampBackward0",
    "ClampBackward1",
    "ClampMinBackward0",
    "ClampMaxBackward0",
    "HardtanhBackward0",  # also F.relu6
    kind=Kind.ZERO_ONE,
)
@register("MaskedFillBackward0", "MaskedFillBackward1", kind=Kind.ZERO_ONE | Kind.LOSS_COMBINER)
def select_entries(call: NodeCall):
    """Each output entry is one input entry or a constant (where, masked_fill, clamp and
    hardtanh with their bounds): J holds zeros and ones and there is no curvature, so
    h = J^T h_z, the node's own backward formula applied to h_z."""
    if call.h is None:
        return (None,) * len(call.grad_in)
    return backward_formula(call.node, call.h)


# Each input entry reaches one output entry (per broadcast copy), (piecewise) linearly or
# multilinearly: no curvature on the diagonal.
@register(
    "MinimumBackward0",  # ties: torch gives each input half the gradient, so J = 1/2 there
    "MaximumBackward0",
    "FminBackward0",
    "FmaxBackward0",
    "AddcmulBackward0",  # x + v t1 t2
    "LerpBackward0",  # x + w (y - x), w a number
    "LerpBackward1",  # w a tensor: bilinear in (w, x) and (w, y)
    "RemainderBackward1",  # x - floor(x / y) y: slope 1 in x, -floor(x / y) in y
    "FmodBackward1",  # x - trunc(x / y) y: slope 1 in x, -trunc(x / y) in y
    kind=Kind.ENTRYWISE_LINEAR,
)
def entrywise(call: NodeCall):
    """h_x = (J^T h_z) * (J^T 1): the node's backward formula applied to h_z and to ones."""
    return entrywise_linear(call)


@register("AddcdivBackward0")
def addcdiv(call: NodeCall):
    """z = x + v t1 / t2: h_x = h_z, h_t1 = v^2 h_z / t2^2,
    h_t2 = (v t1 / t2^2)^2 h_z + 2 v t1 / t2^3 g_z (rules.arithmetic's quotient)."""
    h, g = call.h, call.g
    value = call.saved("value")
    numerator, denominator = call.saved("tensor1"), call.saved("tensor2")
    h_t1 = h_t2 = None
    if h is not None and call.needs(1):
        h_t1 = scaled(arithmetic.quotient_numerator(h, denominator), value)
    if call.needs(2) and (h is not None or g is not None):
        quotient = value * numerator / denominator
        h_t2 = arithmetic.quotient_denominator(h, g, quotient, denominator)
    return h, h_t1, h_t2


def _two_inputs(call: NodeCall, derivatives):
    """z = f(x, y) entrywise: each input gets first^2 h_z + second g_z (the other held
    fixed); ``derivatives()`` returns ((first_x, second_x), (first_y, second_y))."""
    h, g = call.h, call.g
    if h is None and g is None:
        return None, None
    results = []
    for i, (first, second) in enumerate(derivatives()):
        if not call.needs(i):
            results.append(None)
        elif h is None:
            results.append(None if isinstance(second, float) and second == 0 else second * g)
        else:
            results.append(elementwise_input(h.expand_as(first), g, first, second))
    return tuple(results)


@register("PowBackward1")
def pow_tensor(call: NodeCall):
    """z = x^y, both tensors: for x, y x^(y-1) and y (y-1) x^(y-2); for y, z log x and
    z log(x)^2 (rules.arithmetic)."""
    x, y = call.saved("self"), call.saved("exponent")

    def derivatives():
        return (
            arithmetic.power_base_derivatives(x, y) if call.needs(0) else (None, None),
            arithmetic.power_exponent_derivatives(x, y, call.saved("result"))
            if call.needs(1)
            else (None, None),
        )

    return _two_inputs(call, derivatives)


@register("PowBackward2")
def pow_number_base(call: NodeCall):
    """z = b^y for a number b: z log b and z log(b)^2."""
    base, y = call.saved("self"), call.saved("exponent")
    return unary(call, lambda: arithmetic.power_exponent_derivatives(base, y, call.saved("result")))


@register("XlogyBackward0")
def xlogy(call: NodeCall):
    """z = x log y: h_x = log(y)^2 h_z (linear in x); h_y = (x / y)^2 h_z - x / y^2 g_z."""
    x, y = call.saved("self"), call.saved("other")

    def derivatives():
        d_x, d_y, d2_y = arithmetic.xlogy_derivatives(x, y)
        return (d_x, 0.0), (d_y, d2_y)

    return _two_inputs(call, derivatives)


@register("HypotBackward0")
def hypot(call: NodeCall):
    """z = sqrt(x^2 + y^2) (rules.arithmetic)."""
    x, y, z = call.saved("self"), call.saved("other"), call.saved("result")

    def derivatives():
        d_x, d2_x, d_y, d2_y = arithmetic.hypot_derivatives(x, y, z)
        return (d_x, d2_x), (d_y, d2_y)

    return _two_inputs(call, derivatives)


@register("Atan2Backward0")
def atan2(call: NodeCall):
    """z = atan2(y, x) (rules.arithmetic)."""
    y, x = call.saved("self"), call.saved("other")

    def derivatives():
        d_y, d2_y, d_x, d2_x = arithmetic.atan2_derivatives(y, x)
        return (d_y, d2_y), (d_x, d2_x)

    return _two_inputs(call, derivatives)


# Functions whose derivative is zero wherever it exists (torch's gradient is zero): nothing
# propagates.
@register(
    "SignBackward0",
    "SgnBackward0",
    "FloorBackward0",
    "CeilBackward0",
    "RoundBackward0",
    "RoundBackward1",
    "TruncBackward0",
)
def zero_derivative(call: NodeCall):
    """h_x = 0 (J = 0 and no curvature)."""
    return (None,) * len(call.grad_in)
