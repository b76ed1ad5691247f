"""Small pieces the rule modules share (bookkeeping only; the formulas live in hesscale.rules)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from hesscale.engine.call import NodeCall
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
