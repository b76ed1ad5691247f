"""Loss kernels: NLL (cross-entropy's second half), MSE, BCE with logits
(formulas: rules.losses)."""

from __future__ import annotations

import torch

from hesscale.engine.call import NodeCall
from hesscale.engine.registry import register
from hesscale.internals import apply_backward
from hesscale.rules import losses
from hesscale.rules.elementwise import elementwise_input


def _diagonal(h, g, first, second):
    """first^2 h + second g, where h and g may be None (zero) or broadcast against first."""
    if h is None and g is None:
        return None
    if h is None:
        return (second * g).expand_as(first)
    return elementwise_input(h.expand_as(first), g, first, second)


@register("NllLossBackward0", "NllLoss2DBackward0")
def nll_loss(call: NodeCall):
    """NLL is linear in its input and each input entry reaches at most one output, with
    J[k, i] = vjp(1)[i]: h_x = vjp(h_z) * vjp(1), the node's backward formula applied to h_z
    and to ones."""
    h = call.h
    if h is None:
        return (None,) * len(call.grad_in)
    spread = apply_backward(call.node, h)[0]
    ones = apply_backward(call.node, torch.ones_like(h))[0]
    return (spread * ones, *(None,) * (len(call.grad_in) - 1))


@register("MseLossBackward0")
def mse_loss(call: NodeCall):
    """c (x - y)^2 summed (or per element for reduction='none')."""
    x, y = call.saved("self"), call.saved("target")
    scale = losses.reduction_scale(call.saved("reduction"), x.numel())
    first, second = losses.mse_derivatives(x, y, scale)
    h, g = call.h, call.g
    h_x = _diagonal(h, g, first, second)
    return (h_x if call.needs(0) else None, h_x if call.needs(1) else None)


@register("BinaryCrossEntropyWithLogitsBackward0")
def bce_with_logits(call: NodeCall):
    x, y = call.saved("self"), call.saved("target")
    weight, pos_weight = call.saved("weight"), call.saved("pos_weight")
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
