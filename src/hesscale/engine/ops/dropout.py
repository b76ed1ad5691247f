"""Dropout's fused kernel (formula: rules.shape). Dropout that multiplies by a mask (what
nn.Dropout and F.dropout record on the CPU, and the alpha / feature dropouts) is ordinary
arithmetic: MulBackward0, AddBackward0."""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.registry import register
from hesscale.rules import shape


@register("NativeDropoutBackward0")
def native_dropout(call: NodeCall):
    """z = x * m / (1 - p) with the kept-entries mask m the forward pass drew (torch's fused
    dropout kernel; on the CPU nn.Dropout records a plain MulBackward0 by the mask instead):
    h_x = m h_z / (1 - p)^2."""
    h = call.h
    if h is None:
        return (None,)
    p = call.saved("p")
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)
    return (shape.masked_scale_input(h, call.saved("result1"), scale),)
