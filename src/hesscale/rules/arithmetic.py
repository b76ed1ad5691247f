"""Elementwise operations of two tensors (broadcast against each other).

Each output entry depends on one entry of each input, so J is diagonal per input (after
broadcasting; the engine sums broadcast copies) and

    h_x = (dz/dx)^2 h_z + (d^2 z / dx^2) g_z

with the other input held fixed.
"""

from __future__ import annotations

from torch import Tensor


def product_factor(h_out: Tensor, other: Tensor) -> Tensor:
    """z = x * y: h_x = y^2 h_z (z is linear in x)."""
    return h_out * other.square()


def quotient_numerator(h_out: Tensor, denominator: Tensor) -> Tensor:
    """z = x / y: h_x = h_z / y^2 (z is linear in x)."""
    return h_out / denominator.square()


def quotient_denominator(
    h_out: Tensor | None, g_out: Tensor | None, quotient: Tensor, denominator: Tensor
) -> Tensor | None:
    """z = x / y: dz/dy = -z / y and d^2z/dy^2 = 2 z / y^2, so
    h_y = (z / y)^2 h_z + 2 (z / y^2) g_z."""
    ratio = quotient / denominator
    h_in = None if h_out is None else h_out * ratio.square()
    if g_out is None:
        return h_in
    curvature = 2 * g_out * ratio / denominator
    return curvature if h_in is None else h_in + curvature
