"""Convolutions of any dimension, transposed or not (formulas: rules.conv), and the padding
modes other than zeros, which torch records as separate nodes before the convolution
(reflection and replication padding as their own nodes, circular padding as copies into
slices)."""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.shape import zero_one_jacobian
from hesscale.engine.registry import Kind, register
from hesscale.rules import conv
from hesscale.rules.conv import ConvGeometry


def geometry(call: NodeCall) -> ConvGeometry:
    """ATen's convolution pads symmetrically; padding='same' with an even kernel is recorded
    as a separate ConstantPadNd before it."""
    transposed = call.saved("transposed")
    return ConvGeometry(
        stride=tuple(call.saved("stride")),
        padding=tuple((p, p) for p in call.saved("padding")),
        dilation=tuple(call.saved("dilation")),
        groups=call.saved("groups"),
        transposed=transposed,
        output_padding=tuple(call.saved("output_padding")) if transposed else None,
    )


@register("ConvolutionBackward0")
def convolution(call: NodeCall):
    """z = conv(x, W) + b, bilinear in (x, W): h_x = conv-backward-data(h_z, W^2),
    h_W = conv-backward-weight(h_z, x^2), h_b = h_z summed over batch and space."""
    h = call.h
    if h is None:
        return None, None, None
    x, weight = call.saved("input"), call.saved("weight")
    shape = geometry(call)
    h_x, h_w = None, None
    if call.needs(0) or call.needs(1):
        h_x, h_w = conv.conv_diagonals(h, x, weight, shape, call.needs(0), call.needs(1))
    h_b = conv.conv_bias(h, weight.dim() - 2) if call.needs(2) else None
    return h_x, h_w, h_b


# Reflection and replication padding copy input entries: a 0/1 Jacobian (an entry copied
# several times sums what its copies receive).
@register(
    "ReflectionPad1DBackward0",
    "ReflectionPad2DBackward0",
    "ReflectionPad3DBackward0",
    "ReplicationPad1DBackward0",
    "ReplicationPad2DBackward0",
    "ReplicationPad3DBackward0",
    kind=Kind.ZERO_ONE,
)
def copying_padding(call: NodeCall):
    """h_x = J^T h_z: the padding's backward formula applied to the diagonal."""
    return zero_one_jacobian(call)
