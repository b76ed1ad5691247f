"""Small pieces the rule modules share (bookkeeping only; the formulas live in hesscale.rules)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hesscale.engine.call import NodeCall
from hesscale.internals import apply_backward, output_dtype
from hesscale.rules.elementwise import Derivatives, elementwise_input


def unary(call: NodeCall, derivatives: Callable[[], Derivatives]) -> tuple[Tensor | None]:
    """An elementwise z = sigma(x): h_x = sigma'(x)^2 h_z + sigma''(x) g_z.

    ``derivatives()`` returns (sigma', sigma''); it is only called when there is something to
    propagate (h_z and g_z are None, i.e. zero, at the top of the graph).
    """
    h, g = call.h, call.g
    if h is None and g is None:
        return (None,)
    first, second = derivatives()
    if h is not None:
        return (elementwise_input(h, g, first, second),)
    if isinstance(second, Tensor):
        return (second * g,)
    return (None,) if second == 0 else (g * second,)


def add_if(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """a + b where None stands for zero."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def scaled(h: Tensor | None, factor: float) -> Tensor | None:
    """factor^2 * h: a constant factor in a linear operation (None stays None)."""
    if h is None or factor == 1:
        return h
    return h * (factor * factor)


def backward_formula(node, *h_out: Tensor | None) -> tuple:
    """The node's backward formula applied to diagonals (``internals.apply_backward``).

    Diagonals may be wider than the node's dtype (float32 through a float16 model,
    rules.precision). Most formulas follow the incoming dtype; the few that combine it with a
    tensor the node saved in its own dtype (e.g. index_put's, NLL's) raise, and get the
    diagonal cast to the node's dtype, with the result cast back."""
    try:
        return apply_backward(node, *h_out)
    except RuntimeError:
        dtypes = [output_dtype(node, i) for i in range(len(h_out))]
        if all(h is None or h.dtype == d for h, d in zip(h_out, dtypes, strict=True)):
            raise
        wide = next(h.dtype for h in h_out if h is not None)
        narrow = [None if h is None else h.to(d) for h, d in zip(h_out, dtypes, strict=True)]
        return tuple(None if r is None else r.to(wide) for r in apply_backward(node, *narrow))


def entrywise_linear(call: NodeCall) -> tuple[Tensor | None, ...]:
    """For operations where each input entry reaches at most one output entry (per broadcast
    copy) through a linear, piecewise-linear or multilinear map, so that d^2 z_k / dx_i^2 = 0:
    diag(J^T diag(h) J)_i = J_ki^2 h_k = (J^T h)_i (J^T 1)_i, the node's backward formula applied
    to h and to ones (in the output's broadcast shape; the engine sums broadcast copies)."""
    if call.h is None:
        return (None,) * len(call.grad_in)
    spread = backward_formula(call.node, call.h)
    ones = backward_formula(call.node, torch.ones_like(call.h))
    return tuple(
        None if s is None or not call.needs(i) else s * o
        for i, (s, o) in enumerate(zip(spread, ones, strict=True))
    )
