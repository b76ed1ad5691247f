"""Operations that move, select, copy or sum entries without scaling them (views, reshapes,
slicing, indexing, cat / stack / split, padding, expand, sums, max-pool routing, ...).

Their Jacobian holds only zeros and ones, so J^2 = J and their own curvature is zero:

    h_x = diag(J^T diag(h_z) J) = J^T h_z,

which is the node's own backward formula applied to h_z instead of the gradient.
"""

from __future__ import annotations

import math

import torch

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.common import backward_formula
from hesscale.engine.registry import Kind, register
from hesscale.internals import output_shape, saved_value

ZERO_ONE = Kind.ZERO_ONE
# pure views and copies handle complex tensors as pairs of real numbers (Kind.COMPLEX_READY)
VIEW = Kind.ZERO_ONE | Kind.RESHUFFLE | Kind.COMPLEX_READY
RESHAPE = VIEW | Kind.LAYOUT | Kind.LOSS_COMBINER  # HesScaleGN looks through these


# views and reshapes
@register(
    "ViewBackward0",
    "UnsafeViewBackward0",
    "UnsqueezeBackward0",
    "SqueezeBackward0",
    "SqueezeBackward1",
    kind=RESHAPE,
)
@register("TransposeBackward0", "PermuteBackward0", kind=VIEW | Kind.LAYOUT)
@register("CloneBackward0", kind=VIEW | Kind.LOSS_COMBINER)
@register("ReshapeAliasBackward0", "AliasBackward0", "TBackward0", "SqueezeBackward2", kind=VIEW)
# a complex tensor as (..., 2) real numbers and back (the diagonal too: see Kind.COMPLEX_READY)
@register("ViewAsRealBackward0", "ViewAsComplexBackward0", kind=VIEW)
@register(
    "TransposeBackward1",
    "UnsqueezeBackward1",
    "ExpandBackward0",
    "AsStridedBackward0",
    "AsStridedBackward1",  # as_strided of a non-contiguous input (adaptive pooling of a view)
    "Im2ColBackward0",  # F.unfold: every output entry is one input entry (or padding)
    "Col2ImBackward0",  # F.fold: every input entry is summed into one output entry
    "DiagEmbedBackward0",
    "Rot90Backward0",
    "DiagonalBackward0",
    "UnfoldBackward0",
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
    kind=ZERO_ONE,
)
# selecting entries
@register(
    "SelectBackward0",
    "SliceBackward0",
    "IndexBackward0",
    "IndexSelectBackward0",
    "GatherBackward0",
    "TakeBackward0",
    "MaskedSelectBackward0",
    kind=ZERO_ONE,
    family="indexing",
)
# writes into a tensor (in place or not): each output entry is an entry of the tensor, of the
# values written, or a constant (duplicate indices: torch's gradient convention)
@register(
    "torch::autograd::CopyBackwards",  # x.copy_(y)
    "MaskedScatterBackward0",
    "ScatterBackward0",
    "ScatterBackward1",
    "ScatterAddBackward0",
    "IndexCopyBackward0",
    "IndexFillBackward0",
    "IndexFillBackward1",
    "FillBackward0",
    "FillBackward1",
    "FillBackward3",
    "ZeroBackward0",  # x.zero_()
    kind=ZERO_ONE,
    family="indexing",
)
# x.fill_(c); an empty batch: cross-entropy with probability targets fills NaN
@register("FillBackward2", kind=ZERO_ONE | Kind.LOSS_COMBINER, family="indexing")
# sums
@register("SumBackward0", "SumBackward1", kind=ZERO_ONE | Kind.LOSS_COMBINER, family="reductions")
# z_k = sum_{i <= k} x_i: a 0/1 lower-triangular Jacobian; reductions that pick one entry by
# index (ties: the index torch returned)
@register(
    "CumsumBackward0",
    "MaxBackward0",
    "MinBackward0",
    "KthvalueBackward0",
    "MedianBackward1",
    "NanmedianBackward1",
    "SortBackward0",
    "TopkBackward0",
    "CummaxBackward0",
    "CumminBackward0",
    kind=ZERO_ONE,
    family="reductions",
)
# entries passed through or replaced by a constant: threshold, shrinkage
@register(
    "ThresholdBackward0",
    "ThresholdBackward1",
    "HardshrinkBackward0",
    "SoftshrinkBackward0",  # x -+ lambda outside [-lambda, lambda], 0 inside
    kind=ZERO_ONE,
    family="activations",
)
@register(
    "FracBackward0",  # x - trunc(x): slope 1
    "RemainderBackward0",  # x - floor(x / c) c for a number c: slope 1
    "FmodBackward0",  # x - trunc(x / c) c: slope 1
    "NanToNumBackward0",  # finite entries passed, NaN and infinities replaced by constants
    kind=ZERO_ONE,
    family="arithmetic",
)
def zero_one_jacobian(call: NodeCall):
    """h_x = J^T h_z: the node's backward formula applied to the diagonal."""
    if all(h is None for h in call.h_out):
        return (None,) * len(call.grad_in)
    return backward_formula(call.node, *call.h_out)


def _no_colliding_broadcast(node) -> str | None:
    """index_put_ with accumulate=True adds a value broadcast over repeated indices several
    times into one entry (J = 2, 3, ...): refuse values that need a gradient and broadcast over
    integer indices (masks cannot repeat)."""
    values, nr = node.next_functions[1]
    if values is None or not saved_value(node, "accumulate"):
        return None
    indices = saved_value(node, "indices")
    if any(i is not None and i.dtype == torch.bool for i in indices):
        return None
    index_shape = torch.broadcast_shapes(*(i.shape for i in indices if i is not None))
    shape = output_shape(node, 0)
    indexed = index_shape.numel()
    for dim, size in enumerate(shape):
        if dim >= len(indices) or indices[dim] is None:
            indexed *= size
    if math.prod(output_shape(values, nr)) < indexed:
        return (
            "index_put_(..., accumulate=True) with values that need a gradient and broadcast "
            "over the indexed entries (a value added twice at a repeated index has J = 2); "
            "expand the values to the indexed shape first, or use index_add_"
        )
    return None


@register("IndexPutBackward0", check=_no_colliding_broadcast, kind=ZERO_ONE, family="indexing")
def index_put(call: NodeCall):
    """x[idx] = y, x[mask] = y, x.index_put_(indices, y, accumulate): each output entry is an
    entry of x, of y, or (accumulate) their sum, so h = J^T h_z (repeated indices without
    accumulate: torch's gradient convention, every write receives the entry's gradient)."""
    return zero_one_jacobian(call)


@register("ToCopyBackward0", kind=Kind.LOSS_COMBINER, family="identity")
def to_copy(call: NodeCall):
    """A dtype or device change: h_x = h_z, kept in its own (wider) precision, moved to the
    input's device."""
    h = call.h
    return (None if h is None else h.to(call.grad_in[0].device),)


@register(
    "BackwardHookFunctionBackward",
    kind=Kind.MODULE_HOOK | Kind.LAYOUT | Kind.LOSS_COMBINER,
    family="identity",
)
@register("_DDPSinkBackward", kind=Kind.DDP_OUTPUT, family="identity")
def identity(call: NodeCall):
    """Identity nodes that hooks insert: nn.Module's full backward hooks (e.g. in
    BackPACK-extended models) and DistributedDataParallel's output sink (with
    find_unused_parameters or static_graph). Each input passes through as the matching
    output, h_x = h_z."""
    return call.h_out
