"""Activation functions and the softmax family (formulas: rules.elementwise, rules.softmax)."""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.common import unary
from hesscale.engine.registry import Kind, register
from hesscale.internals import saved_value
from hesscale.rules import elementwise, softmax
from hesscale.rules.precision import exp_without_subnormals, upcast


@register("ReluBackward0")
def relu(call: NodeCall):
    """h_x = h_z where x > 0 (ReLU has no curvature); ``result`` is positive exactly there."""
    h = call.h
    return (None if h is None else elementwise.relu_input(h, call.saved("result")),)


@register("TanhBackward0")
def tanh(call: NodeCall):
    if call.h is None and call.g is None:
        return (None,)
    return (elementwise.tanh_input(call.h, call.g, call.saved("result")),)


@register("SigmoidBackward0")
def sigmoid(call: NodeCall):
    return unary(call, lambda: elementwise.sigmoid_derivatives_from_output(call.saved("result")))


@register("LeakyReluBackward0")
def leaky_relu(call: NodeCall):
    slope = call.saved("negative_slope")
    return unary(call, lambda: elementwise.leaky_relu_derivatives(call.saved("self"), slope))


def _nonnegative_slope(node) -> str | None:
    if saved_value(node, "negative_slope") < 0:
        return "in-place leaky_relu with a negative slope (use inplace=False)"
    return None


@register("LeakyReluBackward1", check=_nonnegative_slope)
def leaky_relu_inplace(call: NodeCall):
    """In-place: the output is positive exactly where the input is (for a slope >= 0)."""
    slope = call.saved("negative_slope")
    return unary(call, lambda: elementwise.leaky_relu_derivatives(call.saved("result"), slope))


@register("EluBackward0")
def elu(call: NodeCall):
    """ELU, SELU (torch records both as ELU with scales)."""
    args = call.saved("alpha"), call.saved("scale"), call.saved("input_scale")
    return unary(call, lambda: elementwise.elu_derivatives(call.saved("self"), *args))


@register("EluBackward1")
def elu_inplace(call: NodeCall):
    args = call.saved("alpha"), call.saved("scale"), call.saved("input_scale")
    return unary(call, lambda: elementwise.elu_derivatives_from_output(call.saved("result"), *args))


@register("CeluBackward1")
def celu_inplace(call: NodeCall):
    """In-place CELU: from the output, as ELU with input scale 1 / alpha."""
    alpha = call.saved("alpha")
    result = call.saved("result")
    return unary(
        call, lambda: elementwise.elu_derivatives_from_output(result, alpha, 1.0, 1.0 / alpha)
    )


@register("CeluBackward0")
def celu(call: NodeCall):
    """celu(x, alpha) = elu with input scale 1 / alpha."""
    alpha = call.saved("alpha")
    return unary(
        call, lambda: elementwise.elu_derivatives(call.saved("self"), alpha, 1.0, 1.0 / alpha)
    )


@register("SoftplusBackward0")
def softplus(call: NodeCall):
    beta, threshold = call.saved("beta"), call.saved("threshold")
    return unary(
        call, lambda: elementwise.softplus_derivatives(call.saved("self"), beta, threshold)
    )


@register("LogSigmoidBackward0")
def log_sigmoid(call: NodeCall):
    return unary(call, lambda: elementwise.logsigmoid_derivatives(call.saved("self")))


@register("SiluBackward0")
def silu(call: NodeCall):
    return unary(call, lambda: elementwise.silu_derivatives(call.saved("self")))


@register("GeluBackward0")
def gelu(call: NodeCall):
    if call.h is None and call.g is None:
        return (None,)
    return (elementwise.gelu_input(call.h, call.g, call.saved("self"), call.saved("approximate")),)


@register("MishBackward0")
def mish(call: NodeCall):
    return unary(call, lambda: elementwise.mish_derivatives(call.saved("self")))


@register("HardswishBackward0")
def hardswish(call: NodeCall):
    return unary(call, lambda: elementwise.hardswish_derivatives(call.saved("self")))


@register("HardsigmoidBackward0")
def hardsigmoid(call: NodeCall):
    return unary(call, lambda: elementwise.hardsigmoid_derivatives(call.saved("self")))


@register("RreluWithNoiseBackward0")
def rrelu(call: NodeCall):
    """Randomized leaky ReLU (rules.elementwise.rrelu_derivatives)."""
    return unary(call, lambda: _rrelu_derivatives(call, call.saved("self")))


def _nonnegative_lower(node) -> str | None:
    if saved_value(node, "lower") < 0:
        return "in-place rrelu with a negative lower bound (use inplace=False)"
    return None


@register("RreluWithNoiseBackward1", check=_nonnegative_lower)
def rrelu_inplace(call: NodeCall):
    """In-place: the output is positive exactly where the input is (for slopes >= 0)."""
    return unary(call, lambda: _rrelu_derivatives(call, call.saved("result")))


def _rrelu_derivatives(call: NodeCall, x):
    args = call.saved("noise"), call.saved("lower"), call.saved("upper"), call.saved("training")
    return elementwise.rrelu_derivatives(x, *args)


@register("GluBackward0")
def glu(call: NodeCall):
    """GLU a * sigmoid(b) over the halves of x (rules.elementwise.glu_input)."""
    h, g = call.h, call.g
    if h is None and g is None:
        return (None,)
    return (elementwise.glu_input(call.saved("self"), h, g, call.saved("dim")),)


@register("PreluKernelBackward0")
def prelu(call: NodeCall):
    """nn.PReLU / F.prelu: z = x for x > 0, w x otherwise; w as the kernel sees it (viewed to
    broadcast against x, so the engine's sum over broadcast entries gives each weight its
    share)."""
    h = call.h
    if h is None:
        return None, None
    x, weight = call.saved("self"), call.saved("weight")
    return (
        elementwise.prelu_input(h, x, weight) if call.needs(0) else None,
        elementwise.prelu_weight(h, x) if call.needs(1) else None,
    )


@register("SoftmaxBackward0")
def softmax_(call: NodeCall):
    """Softmax along ``dim``, with its full Jacobian (rules.softmax)."""
    h, g = call.h, call.g
    if h is None and g is None:
        return (None,)
    probs = upcast(call.saved("result"))
    return (softmax.softmax_input(probs, h, g, call.saved("dim")),)


@register("LogSoftmaxBackward0", kind=Kind.LOG_PROBABILITIES)
def log_softmax(call: NodeCall):
    """Log-softmax along ``dim``, with its full Jacobian (rules.softmax)."""
    h, g = call.h, call.g
    if h is None and g is None:
        return (None,)
    probs = exp_without_subnormals(upcast(call.saved("result")))
    return (softmax.log_softmax_input(probs, h, g, call.saved("dim")),)
