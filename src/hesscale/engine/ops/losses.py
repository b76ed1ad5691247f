"""Loss kernels: NLL (cross-entropy's second half), MSE, BCE with logits
(formulas: rules.losses)."""

from __future__ import annotations

import torch

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.common import backward_formula
from hesscale.engine.registry import Kind, register
from hesscale.rules import losses
from hesscale.rules.elementwise import elementwise_input
from hesscale.rules.precision import promote


def _saved(call: NodeCall, *names: str) -> tuple:
    """The saved tensors, float16 ones in float32 (rules.precision): the loss's curvature starts
    the diagonal, in the precision it is passed on in."""
    return promote(*(call.saved(name) for name in names))


def _diagonal(h, g, first, second):
    """first^2 h + second g, where h and g may be None (zero) or broadcast against first."""
    if h is None and g is None:
        return None
    if h is None:
        return (second * g).expand_as(first)
    return elementwise_input(h.expand_as(first), g, first, second)


@register("NllLossBackward0", "NllLoss2DBackward0", kind=Kind.NLL_LOSS)
def nll_loss(call: NodeCall):
    """NLL is linear in its input and each input entry reaches at most one output, with
    J[k, i] = vjp(1)[i]: h_x = vjp(h_z) * vjp(1), the node's backward formula applied to h_z
    and to ones."""
    h = call.h
    if h is None:
        return (None,) * len(call.grad_in)
    spread = backward_formula(call.node, h)[0]
    ones = backward_formula(call.node, torch.ones_like(h))[0]
    return (spread * ones, *(None,) * (len(call.grad_in) - 1))


@register("MseLossBackward0", kind=Kind.LOSS)
def mse_loss(call: NodeCall):
    """c (x - y)^2 summed (or per element for reduction='none')."""
    x, y = _saved(call, "self", "target")
    scale = losses.reduction_scale(call.saved("reduction"), x.numel())
    first, second = losses.mse_derivatives(x, y, scale)
    h, g = call.h, call.g
    h_x = _diagonal(h, g, first, second)
    return (h_x if call.needs(0) else None, h_x if call.needs(1) else None)


@register("BinaryCrossEntropyWithLogitsBackward0", kind=Kind.LOSS)
def bce_with_logits(call: NodeCall):
    x, y, weight, pos_weight = _saved(call, "self", "target", "weight", "pos_weight")
    scale = losses.reduction_scale(call.saved("reduction"), x.numel())
    h, g = call.h, call.g
    h_x = h_y = None
    if call.needs(0):
        first, second = losses.bce_with_logits_derivatives(x, y, weight, pos_weight, scale)
        h_x = _diagonal(h, g, first, second)
    if call.needs(1) and h is not None:
        first = losses.bce_with_logits_target_derivative(x, weight, pos_weight, scale)
        h_y = _diagonal(h, None, first, 0.0)
    return (h_x, h_y)


def _pointwise_pair(call: NodeCall, first, second):
    """A loss of d = x - y per element: the same diagonal for x and y (first^2 h + second g;
    dl/dy = -dl/dx)."""
    h_x = _diagonal(call.h, call.g, first, second)
    return (h_x if call.needs(0) else None, h_x if call.needs(1) else None)


def _scale(call: NodeCall, x) -> float:
    return losses.reduction_scale(call.saved("reduction"), x.numel())


@register("HuberLossBackward0", kind=Kind.LOSS)
def huber_loss(call: NodeCall):
    x, y = _saved(call, "self", "target")
    first, second = losses.huber_derivatives(x, y, call.saved("delta"), _scale(call, x))
    return _pointwise_pair(call, first, second)


@register("SmoothL1LossBackward0", kind=Kind.LOSS)
def smooth_l1_loss(call: NodeCall):
    x, y = _saved(call, "self", "target")
    first, second = losses.smooth_l1_derivatives(x, y, call.saved("beta"), _scale(call, x))
    return _pointwise_pair(call, first, second)


@register("BinaryCrossEntropyBackward0", kind=Kind.LOSS)
def binary_cross_entropy(call: NodeCall):
    """BCE on probabilities (rules.losses.binary_cross_entropy_derivatives); linear in the
    target."""
    p, y, weight = _saved(call, "self", "target", "weight")
    scale = _scale(call, p)
    h, g = call.h, call.g
    h_p = h_y = None
    if call.needs(0):
        first, second = losses.binary_cross_entropy_derivatives(p, y, weight, scale)
        h_p = _diagonal(h, g, first, second)
    if call.needs(1) and h is not None:
        first = losses.binary_cross_entropy_target_derivative(p, weight, scale)
        h_y = _diagonal(h, None, first, 0.0)
    return (h_p, h_y)


@register("SoftMarginLossBackward0", kind=Kind.LOSS)
def soft_margin_loss(call: NodeCall):
    x, y = _saved(call, "self", "target")
    first, second = losses.soft_margin_derivatives(x, y, _scale(call, x))
    return (_diagonal(call.h, call.g, first, second), *(None,) * (len(call.grad_in) - 1))


@register("MultiMarginLossBackward0", kind=Kind.LOSS)
def multi_margin_loss(call: NodeCall):
    """Multi-class hinge loss over the last dimension (rules.losses.multi_margin_derivatives);
    each sample's scores reach only that sample's loss."""
    x, target, weight = _saved(call, "self", "target", "weight")
    reduction = call.saved("reduction")
    samples = x.shape[0] if x.dim() == 2 else 1
    scale = losses.reduction_scale(reduction, samples)
    first, second = losses.multi_margin_derivatives(
        x, target, call.saved("p"), call.saved("margin"), weight, scale
    )
    h, g = call.h, call.g
    if reduction == 0:  # one loss per sample: broadcast over the classes
        h = None if h is None else h.unsqueeze(-1)
        g = None if g is None else g.unsqueeze(-1)
    h_x = None if h is None and isinstance(second, float) else _diagonal(h, g, first, second)
    return (h_x, *(None,) * (len(call.grad_in) - 1))
