"""Operations that move, select, copy or sum entries without scaling them (views, reshapes,
slicing, indexing, cat / stack / split, padding, expand, sums, max-pool routing, ...).

Their Jacobian holds only zeros and ones, so J^2 = J and their own curvature is zero:

    h_x = diag(J^T diag(h_z) J) = J^T h_z,

which is the node's own backward formula applied to h_z instead of the gradient.
"""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.registry import register
from hesscale.internals import apply_backward

ZERO_ONE_JACOBIAN = (
    # views and reshapes
    "ViewBackward0",
    "UnsafeViewBackward0",
    "ReshapeAliasBackward0",
    "AliasBackward0",
    "TBackward0",
    "TransposeBackward0",
    "TransposeBackward1",
    "PermuteBackward0",
    "UnsqueezeBackward0",
    "UnsqueezeBackward1",
    "SqueezeBackward0",
    "SqueezeBackward1",
    "SqueezeBackward2",
    "ExpandBackward0",
    "CloneBackward0",
    "AsStridedBackward0",
    "DiagonalBackward0",
    "UnfoldBackward0",
    # selecting and copying entries
    "SelectBackward0",
    "SliceBackward0",
    "IndexBackward0",
    "IndexSelectBackward0",
    "GatherBackward0",
    "TakeBackward0",
    "MaskedSelectBackward0",
    "RepeatBackward0",
    "FlipBackward0",
    "RollBackward0",
    "TrilBackward0",
    "TriuBackward0",
    "ConstantPadNdBackward0",
    "CatBackward0",
    "StackBackward0",
    "SplitBackward0",
    "SplitWithSizesBackward0",
    "UnsafeSplitBackward0",
    "UnsafeSplitWithSizesBackward0",
    "UnbindBackward0",
    # sums
    "SumBackward0",
    "SumBackward1",
)


@register(*ZERO_ONE_JACOBIAN)
def zero_one_jacobian(call: NodeCall):
    """h_x = J^T h_z: the node's backward formula applied to the diagonal."""
    if all(h is None for h in call.h_out):
        return (None,) * len(call.grad_in)
    return apply_backward(call.node, *call.h_out)


@register("ToCopyBackward0")
def to_copy(call: NodeCall):
    """A dtype or device change: h_x = h_z, kept in its own (wider) precision, moved to the
    input's device."""
    h = call.h
    return (None if h is None else h.to(call.grad_in[0].device),)


@register("BackwardHookFunctionBackward")
def identity(call: NodeCall):
    """The identity nodes nn.Module's full backward hooks insert (e.g. in BackPACK-extended
    models): each input is passed through as the matching output, h_x = h_z."""
    return call.h_out
