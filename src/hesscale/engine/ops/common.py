"""Small pieces the rule modules share (bookkeeping only; the formulas live in hesscale.rules)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hesscale.engine.call import NodeCall
from hesscale.internals import apply_backward
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


def entrywise_linear(call: NodeCall) -> tuple[Tensor | None, ...]:
    """For operations where each input entry reaches at most one output entry (per broadcast
    copy) through a linear, piecewise-linear or multilinear map, so that d^2 z_k / dx_i^2 = 0:
    diag(J^T diag(h) J)_i = J_ki^2 h_k = (J^T h)_i (J^T 1)_i, the node's backward formula applied
    to h and to ones (in the output's broadcast shape; the engine sums broadcast copies)."""
    if call.h is None:
        return (None,) * len(call.grad_in)
    spread = apply_backward(call.node, call.h)
    ones = apply_backward(call.node, torch.ones_like(call.h))
    return tuple(
        None if s is None or not call.needs(i) else s * o
        for i, (s, o) in enumerate(zip(spread, ones, strict=True))
    )
