"""Pooling and nearest-neighbour resampling (formulas: rules.pooling; 0/1 Jacobians: see
engine.ops.shape)."""

from __future__ import annotations

import torch

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.shape import zero_one_jacobian
from hesscale.engine.registry import Kind, register
from hesscale.rules import pooling


# Each output entry is one input entry (max pools: the window's maximum, as the forward pass
# chose it among ties; nearest upsampling and pixel shuffles: a copy), so J holds zeros and
# ones and there is no curvature. 1-d pools are recorded as 2-d pools between an unsqueeze and
# a squeeze.
@register(
    "MaxPool2DWithIndicesBackward0",
    "MaxPool3DWithIndicesBackward0",
    "AdaptiveMaxPool2DBackward0",
    "AdaptiveMaxPool3DBackward0",
    "FractionalMaxPool2DBackward0",
    "FractionalMaxPool3DBackward0",
    "UpsampleNearest1DBackward0",
    "UpsampleNearest2DBackward0",
    "UpsampleNearest3DBackward0",
    "UpsampleNearestExact1DBackward0",
    "UpsampleNearestExact2DBackward0",
    "UpsampleNearestExact3DBackward0",
    "PixelShuffleBackward0",
    "PixelUnshuffleBackward0",
    "ChannelShuffleBackward0",
    kind=Kind.ZERO_ONE,
)
def copy_entries(call: NodeCall):
    """h_x = J^T h_z: the node's backward formula applied to the diagonal."""
    return zero_one_jacobian(call)


def _per_dim(values, n: int, default=None) -> tuple[int, ...]:
    """torch saves kernel_size / stride / padding as given: one int for all dims, or none
    (stride: the kernel size)."""
    values = tuple(values)
    if not values:
        return default
    return values * n if len(values) == 1 else values


@register("AvgPool2DBackward0")
def avg_pool_2d(call: NodeCall):
    return avg_pool(call, 2)


@register("AvgPool3DBackward0")
def avg_pool_3d(call: NodeCall):
    return avg_pool(call, 3)


def avg_pool(call: NodeCall, n: int):
    """z_k = (1 / c_k) sum of the inputs in window k, over ``n`` spatial dims:
    h_x = P^T(h_z / c) (rules.pooling)."""
    h = call.h
    if h is None:
        return (None,)
    kernel = _per_dim(call.saved("kernel_size"), n)
    return (
        pooling.avg_pool_input(
            h,
            call.saved("self"),
            kernel,
            _per_dim(call.saved("stride"), n, default=kernel),
            _per_dim(call.saved("padding"), n),
            call.saved("ceil_mode"),
            call.saved("count_include_pad"),
            call.saved("divisor_override"),
        ),
    )


@register("AdaptiveAvgPool2DBackward0")
def adaptive_avg_pool_2d(call: NodeCall):
    return adaptive_avg_pool(call, 2)


@register("AdaptiveAvgPool3DBackward0")
def adaptive_avg_pool_3d(call: NodeCall):
    return adaptive_avg_pool(call, 3)


def adaptive_avg_pool(call: NodeCall, n: int):
    """z_k = mean of the inputs in window k, over ``n`` spatial dims: h_x = A^T(h_z / c)
    (rules.pooling)."""
    h = call.h
    if h is None:
        return (None,)
    return (pooling.adaptive_avg_pool_input(h, call.saved("self"), n),)


# Interpolation: per dim, the 1-d interpolation matrix A (out x in) that the forward pass used
# (same sizes, scales, align_corners), computed by running torch's kernel on the identity.


def _interpolation_matrix(bicubic: bool, size_in: int, size_out: int, align: bool, scale, like):
    """A[o, i]: output o of the 1-d interpolation of a signal that is 1 at i and 0 elsewhere."""
    eye = torch.eye(size_in, dtype=like.dtype, device=like.device)
    if bicubic:  # the cubic kernel exists only in 2-d: a second dim of size 1 is the identity
        out = torch.ops.aten.upsample_bicubic2d(eye[None, :, :, None], [size_out, 1], align, scale)
        return out[0, :, :, 0].T
    return torch.ops.aten.upsample_linear1d(eye[None], [size_out], align, scale)[0].T


def _interpolation(scale_names: tuple[str, ...], bicubic: bool = False):
    """The rule of F.interpolate over ``len(scale_names)`` spatial dims."""
    n = len(scale_names)

    def interpolation(call: NodeCall):
        """F.interpolate with mode linear, bilinear, bicubic or trilinear: a separable linear
        map (rules.pooling.separable_linear_input)."""
        h = call.h
        if h is None:
            return (None,)
        sizes_in = call.saved("self_sym_sizes")[-n:]
        sizes_out = call.saved("output_size")
        align = call.saved("align_corners")
        matrices = [
            _interpolation_matrix(bicubic, i, o, align, call.saved(scale), h)
            for i, o, scale in zip(sizes_in, sizes_out, scale_names, strict=True)
        ]
        return (pooling.separable_linear_input(h, matrices),)

    return interpolation


register("UpsampleLinear1DBackward0")(_interpolation(("scales",)))
register("UpsampleBilinear2DBackward0")(_interpolation(("scales_h", "scales_w")))
register("UpsampleBicubic2DBackward0")(_interpolation(("scales_h", "scales_w"), bicubic=True))
register("UpsampleTrilinear3DBackward0")(_interpolation(("scales_d", "scales_h", "scales_w")))
