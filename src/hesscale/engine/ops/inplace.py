"""Writes into tensors: in-place operations on views (``CopySlices``), ``index_add`` and
``scatter_reduce``. (Plain copies, fills, ``index_put_``, ``scatter``, ... have 0/1 Jacobians:
engine.ops.shape.)

An in-place operation f on a view v of a base b (``x[:, 0] = y``, ``x[..., :2].mul_(2)``,
``x.narrow(1, 0, 2).copy_(y)``) gives b' = b outside the view and f(v, others) inside. Autograd
records it as a ``CopySlices`` node on the base, which wraps f's node and runs f's backward
formula on the view's part of the gradient. Its diagonal is

    h_b = h outside the view, f's diagonal for v (from h and g restricted to the view) inside;
    h_other = f's diagonal for that input,

obtained in one of three ways, from the simplest:
- f has a 0/1 Jacobian (copy_, fill_, zero_, masked_fill_, clamp_, ...): so has the whole
  write, and h = J^T h_z is CopySlices' own backward formula applied to h_z;
- each input entry of f reaches one output entry (linearly or multilinearly: add_, sub_, mul_,
  div_ by a constant, addcmul_, lerp_, ...): so does the whole write, and
  h = (J^T h_z) * (J^T 1) (engine.ops.common.entrywise_linear);
- otherwise (exp_, sigmoid_, pow_, div_ by a tensor, ...) f's own rule runs on h and g
  restricted to the view. Autograd does not expose which entries of the base the view covers;
  the chain of view nodes that made the view from the base does (f's first input), so their
  backward formulas, applied to the numbers 1..n laid out as the view, mark each entry's
  position in the base. When the base does not require grad that chain was not recorded: such
  writes are refused before the backward pass, with the out-of-place form to use instead.
"""

from __future__ import annotations

import torch

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.common import backward_formula, entrywise_linear
from hesscale.engine.registry import RULES, Kind, kind_of, register
from hesscale.internals import apply_backward, output_shape, wrapped_node

MAX_VIEW_CHAIN = 64


@register(
    "IndexAddBackward0", "ScatterReduceBackward0", kind=Kind.ENTRYWISE_LINEAR, family="indexing"
)
def index_add_scatter_reduce(call: NodeCall):
    """x.index_add(dim, index, source, alpha=a) and x.scatter_reduce(dim, index, src, reduce)
    ('sum', 'mean', 'amax', 'amin' (ties share), 'prod'): each entry of x and of the source
    reaches one output entry, (piecewise) linearly or multilinearly, so
    h = (J^T h_z) * (J^T 1) (engine.ops.common.entrywise_linear)."""
    return entrywise_linear(call)


def _is_entrywise(node) -> bool:
    """Whether each input entry of ``node`` reaches one output entry (linearly or
    multilinearly), as the registry declares: x / y only when y needs no gradient."""
    kind = kind_of(node)
    if Kind.LINEAR_IN_FIRST in kind:
        return all(child is None for child, _ in node.next_functions[1:])
    return Kind.ENTRYWISE_LINEAR in kind


def view_chain(node) -> list | None:
    """The view nodes that made the written view from the base (from the wrapped node's first
    input down to the base's producer), or None when autograd did not record them."""
    base = node.next_functions[0][0]
    if base is None:
        return None
    current = wrapped_node(node).next_functions[0][0]
    chain = []
    while current is not base:
        if (
            current is None
            or Kind.ZERO_ONE not in kind_of(current)
            or len(current.next_functions) != 1
            or len(chain) == MAX_VIEW_CHAIN
        ):
            return None
        chain.append(current)
        current = current.next_functions[0][0]
    return chain


def _check(node) -> str | None:
    wrapped = wrapped_node(node)
    if wrapped is None:
        return "CopySlices does not expose the in-place operation it wraps in this torch version"
    name = wrapped.name()
    entry = RULES.get(name)
    if entry is None:
        return f"it wraps the in-place operation {name}, which has no HesScale rule"
    if entry.check is not None:
        reason = entry.check(wrapped)
        if reason is not None:
            return reason
    if Kind.ZERO_ONE in entry.kind or _is_entrywise(wrapped) or view_chain(node) is not None:
        return None
    return (
        f"the in-place operation {name} writes into a view of a tensor that does not require "
        "grad (e.g. `buf[:, 0].div_(y)` or `buf[:, 1:].exp_()` on a constant buffer), and "
        "autograd does not record which entries of the buffer the view covers. Write it out of "
        "place: assemble the tensor with torch.cat / torch.stack (e.g. "
        "`buf = torch.cat([buf[:, :1] / y[:, None], buf[:, 1:]], 1)`), or use "
        "buf.index_copy(...) / torch.where(...). Copies into such views (`buf[:, 0] = v`), and "
        "adding or multiplying into them, are supported"
    )


@register("torch::autograd::CopySlices", check=_check)
def copy_slices(call: NodeCall):
    """An in-place operation on a view (see the module docstring)."""
    wrapped = wrapped_node(call.node)
    if Kind.ZERO_ONE in kind_of(wrapped):
        if call.h is None:
            return (None,) * len(call.grad_in)
        return backward_formula(call.node, call.h)
    if _is_entrywise(wrapped):
        return entrywise_linear(call)
    return _through_the_view(call, wrapped)


def _through_the_view(call: NodeCall, wrapped):
    """Run the wrapped operation's rule on h and g restricted to the view; put the view's
    diagonal back into the base's."""
    h, g = call.h, call.g_out[0]
    if h is None and g is None:
        return (None,) * len(call.grad_in)
    view_shape = output_shape(wrapped, 0)
    base_shape = output_shape(call.node, 0)
    index = _view_index(view_chain(call.node), view_shape, h if h is not None else g)

    def restrict(t):
        return None if t is None else t.reshape(-1)[index].view(view_shape)

    grad_in = (restrict(call.grad_in[0]), *call.grad_in[1:])
    view_call = NodeCall(wrapped, (restrict(h),), (restrict(g),), grad_in, call.second_order)
    h_view, *h_others = RULES[wrapped.name()].rule(view_call)
    h_base = None
    if call.needs(0) and (h is not None or h_view is not None):
        like = h if h is not None else g
        h_base = (torch.zeros_like(like) if h is None else h).reshape(-1).clone()
        h_base[index] = 0 if h_view is None else h_view.reshape(-1).to(h_base.dtype)
        h_base = h_base.view(base_shape)
    return (h_base, *h_others)


def _view_index(chain: list, view_shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """For each entry of the view (row-major), its row-major position in the base: the chain's
    backward formulas take 1..n laid out as the view to the base's shape, 0 outside the view;
    sorting puts the zeros first and then the view's entries in order."""
    n = 1
    for size in view_shape:
        n *= size
    marks = torch.arange(1, n + 1, device=like.device).view(view_shape)
    for link in chain:
        marks = apply_backward(link, marks)[0]
    order = marks.reshape(-1).argsort(stable=True)
    return order[order.numel() - n :]
