"""BatchNorm (train and eval mode), LayerNorm, GroupNorm (formulas: rules.normalization).

Each is ONE operation with its own full Jacobian: with batch statistics (BatchNorm in train
mode or without running statistics, which InstanceNorm also records) the standardisation
couples the entries of each group, and its diagonal and its own curvature come from
rules.normalization.standardization_input, without forming Jacobians.
"""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.registry import register
from hesscale.errors import HesScaleError
from hesscale.internals import BATCH_NORM_EPSILON
from hesscale.rules import normalization as norm


def _channel_view(values, ndim: int):
    return None if values is None else values.view(1, -1, *([1] * (ndim - 2)))


@register(*BATCH_NORM_EPSILON)
def batch_norm(call: NodeCall):
    """z = w * y + b per channel (dim 1). Train mode: y standardises each channel over batch
    and space with the batch's statistics (saved mean and invstd); eval mode: with the
    running statistics, an affine map per channel. The same for torch's own kernel and for
    cuDNN's and MIOpen's (CUDA / ROCm), which save the same tensors (their saved variance is
    the inverse standard deviation too) and name eps ``epsilon``."""
    h, g = call.h, call.g
    if h is None and g is None:
        return None, None, None
    x, weight = call.saved("input"), call.saved("weight")
    if call.saved("training"):
        return _batch_norm_train(call, x, weight)
    h_x = h_w = h_b = None
    if h is not None:  # linear in x: no curvature
        running_mean, running_var = call.saved("running_mean"), call.saved("running_var")
        eps = call.saved(BATCH_NORM_EPSILON[call.node.name()])
        if call.needs(0):
            h_x = norm.batchnorm_eval_input(h, running_var, eps, weight)
        if call.needs(1):
            y = norm.batchnorm_eval_normalized(x, running_mean, running_var, eps)
            h_w = norm.batchnorm_weight(h, y)
        if call.needs(2):
            h_b = norm.batchnorm_bias(h)
    return h_x, h_w, h_b


def _batch_norm_train(call: NodeCall, x, weight):
    """The standardisation's group sums are the weight's and bias's diagonals."""
    dims = tuple(d for d in range(x.dim()) if d != 1)
    invstd = _channel_view(call.saved("result2"), x.dim())
    y = norm.standardized(x, _channel_view(call.saved("result1"), x.dim()), invstd)
    h = call.h
    if not call.needs(0):  # only the weight and bias
        if h is None:
            return None, None, None
        return (
            None,
            norm.affine_weight(h, y, dims) if call.needs(1) else None,
            norm.affine_bias(h, dims) if call.needs(2) else None,
        )
    gain = _channel_view(weight, x.dim())
    h_x, h_w, h_b = norm.standardization_input(h, call.g, y, invstd, dims, gain)
    return (
        h_x,
        h_w.view(-1) if h_w is not None and call.needs(1) else None,
        h_b.view(-1) if h_b is not None and call.needs(2) else None,
    )


def _scaled(h, g, weight):
    """h * w^2 and g * w: the diagonal and gradient w.r.t. y of z = w * y + b."""
    if weight is None:
        return h, g
    return (
        None if h is None else h * weight.square(),
        None if g is None else g * weight,
    )


@register("NativeLayerNormBackward0")
def layer_norm(call: NodeCall):
    """z = w * y + b, y standardising each sample over the trailing normalized_shape dims,
    w and b elementwise over them."""
    h, g = call.h, call.g
    if h is None and g is None:
        return None, None, None
    x = call.saved("input")
    k = len(call.saved("normalized_shape"))
    dims = tuple(range(x.dim() - k, x.dim()))
    leading = tuple(range(x.dim() - k))
    invstd = call.saved("result2")
    y = norm.standardized(x, call.saved("result1"), invstd)
    h_x = None
    if call.needs(0):
        h_y, g_y = _scaled(h, g, call.saved("weight"))
        h_x = norm.standardization_input(h_y, g_y, y, invstd, dims).input
    if h is None:
        return h_x, None, None
    h_w = norm.affine_weight(h, y, leading) if call.needs(1) else None
    h_b = norm.affine_bias(h, leading) if call.needs(2) else None
    return h_x, h_w, h_b


@register("NativeGroupNormBackward0")
def group_norm(call: NodeCall):
    """z = w * y + b per channel, y standardising each sample's group of C / G channels over
    those channels and space."""
    if any(t is not None for t in call.h_out[1:] + call.g_out[1:]):
        raise HesScaleError(
            "The mean or rstd output of aten.native_group_norm is used in the graph: HesScale "
            "supports group normalisation through its normalized output only (F.group_norm)."
        )
    h, g = call.h, call.g
    if h is None and g is None:
        return None, None, None
    x, weight = call.saved("input"), call.saved("weight")
    n, c, groups = call.saved("N"), call.saved("C"), call.saved("group")
    grouped = (n, groups, c // groups, -1)
    invstd = call.saved("result2").view(n, groups, 1, 1)
    y = norm.standardized(x.reshape(grouped), call.saved("result1").view(n, groups, 1, 1), invstd)
    h_grouped = None if h is None else h.reshape(grouped)
    h_x = None
    if call.needs(0):
        w = None if weight is None else weight.view(1, groups, c // groups, 1)
        h_y, g_y = _scaled(h_grouped, None if g is None else g.reshape(grouped), w)
        h_x = norm.standardization_input(h_y, g_y, y, invstd, (2, 3)).input.view(x.shape)
    if h is None:
        return h_x, None, None
    h_w = norm.affine_weight(h_grouped, y, (0, 3)).view(c) if call.needs(1) else None
    h_b = norm.affine_bias(h_grouped, (0, 3)).view(c) if call.needs(2) else None
    return h_x, h_w, h_b
