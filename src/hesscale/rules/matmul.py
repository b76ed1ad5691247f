"""Matrix products z = a @ b (also batched: the last two dimensions multiply).

z is bilinear, so with the other factor held fixed each input has no curvature of its own, and
z[i, k] = sum_j a[i, j] b[j, k] links a[i, j] to z[i, k] through the single value b[j, k]:

    h_a = h_z @ (b^2)^T,        h_b = (a^2)^T @ h_z.

The squares and products are computed in float32 where float16 takes part (rules.precision).
Each factor is squared after dividing the lines that enter one sum by c = their largest entry
/ 2^50 (when above 1: only for data whose squares near float32's range), the product multiplied
back by c^2: so an entry whose square overflows gives inf only where the exact sum does, and 0
where the h it meets is 0 (never 0 * inf = NaN). On the CPU the factor is squared as it is
where that is known to be safe (``product_of_squares``), which costs one read of the smaller of
the factor and the product.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from hesscale.internals import is_concrete_cpu
from hesscale.rules.precision import promote

SQUARE_SAFE = 2.0**50  # (2^50)^2 = 2^100: far below float32's 2^128, even summed 2^27 times


def fits_square(t: Tensor) -> bool:
    """True when every |t| <= 2^50 is known, so that t^2 needs no rescaling: checked (one
    read of t) where that costs no device synchronisation and bakes nothing into a traced
    graph (internals.is_concrete_cpu); False (unknown) elsewhere."""
    if not is_concrete_cpu(t):
        return False
    if t.numel() == 0:
        return True
    lowest, highest = torch.aminmax(t)  # (one vectorised pass; NaN fails both comparisons)
    return lowest.item() >= -SQUARE_SAFE and highest.item() <= SQUARE_SAFE


def known_finite(t: Tensor) -> bool:
    """True when t is known to hold no inf or NaN: checked where ``fits_square`` checks;
    False (unknown) elsewhere. A product of squares is finite only if no square overflowed
    (an overflowed square gives inf, or 0 * inf = NaN, in every entry it enters)."""
    if not is_concrete_cpu(t):
        return False
    if t.numel() == 0:
        return True
    lowest, highest = torch.aminmax(t)
    return -math.inf < lowest.item() and highest.item() < math.inf


def scaled_square(t: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """((t / c)^2, c^2) with c = max(1, max |t| along ``dim`` / 2^50) (keepdim):
    t^2 = (t / c)^2 c^2, with no overflow in the first factor. c^2 is capped at the dtype's
    largest number, so that a zero sum stays zero when multiplied back (a sum that is not zero
    is beyond the dtype's range there anyway)."""
    if t.shape[dim] == 0:  # an empty batch: nothing to scale
        return t.square(), t.new_ones(()).expand(t.shape[:dim] + (1,) + t.shape[dim:][1:])
    c = t.abs().amax(dim, keepdim=True).div_(SQUARE_SAFE).clamp_(min=1)
    return (t / c).square_(), c.square_().clamp_(max=torch.finfo(c.dtype).max)


def product_of_squares(
    t: Tensor,
    dim: int,
    product_size: int,
    multiply: Callable[[Tensor], Tensor],
    multiply_back: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``multiply(t^2)`` (a product with ``product_size`` entries) without overflow in t^2:
    where no square can overflow, computed as it stands; elsewhere as
    ``multiply_back(multiply((t / c)^2), c^2)`` (``scaled_square`` along ``dim``). On the CPU
    the plain form is checked by reading whichever is smaller, t (``fits_square``) or the
    product (``known_finite``; the scaled form is computed only when that check fails)."""
    if is_concrete_cpu(t):
        if t.numel() <= product_size:
            if fits_square(t):
                return multiply(t.square())
        else:
            product = multiply(t.square())
            if known_finite(product):
                return product
    squares, c2 = scaled_square(t, dim)
    return multiply_back(multiply(squares), c2)


def matmul_left(h_out: Tensor, right: Tensor) -> Tensor:
    """h_a = h_z @ (b * b)^T for z = a @ b."""
    h_out, right = promote(h_out, right)

    def multiply_back(product: Tensor, c2: Tensor) -> Tensor:
        c2 = c2.mT if c2.dim() > 1 and h_out.dim() > 1 else c2.squeeze(-1)  # vector h_z
        return product.mul_(c2)

    size = h_out.numel() // max(h_out.shape[-1], 1) * right.shape[-2]
    return product_of_squares(right, -1, size, lambda sq: h_out @ sq.mT, multiply_back)


def matmul_right(h_out: Tensor, left: Tensor, transposed: bool = False) -> Tensor:
    """h_b = (a * a)^T @ h_z for z = a @ b.

    ``transposed``: b is stored transposed (nn.Linear's weight enters addmm as W^T); the
    product is then computed as (h_z^T @ a^2)^T, so that h_W comes out in the weight's
    layout."""
    h_out, left = promote(h_out, left)
    if h_out.dim() == 1:  # a vector z = a @ b with b a vector (matrix-vector product)
        size = left.shape[-1]
    else:
        batch = math.prod(_broadcast(h_out.shape[:-2], left.shape[:-2]))
        size = batch * left.shape[-1] * h_out.shape[-1]
    if transposed:
        return product_of_squares(
            left, -2, size, lambda sq: h_out.mT @ sq, lambda p, c2: p.mul_(c2)
        ).mT
    return product_of_squares(left, -2, size, lambda sq: sq.mT @ h_out, lambda p, c2: p.mul_(c2.mT))


def _broadcast(first: torch.Size, second: torch.Size) -> torch.Size:
    """The broadcast of two batch shapes (torch.broadcast_shapes, which runs in Python, only
    where they differ and neither is empty)."""
    if first == second or not second:
        return first
    return second if not first else torch.broadcast_shapes(first, second)


def matrix_vector_matrix(h_out: Tensor, vector: Tensor) -> Tensor:
    """z = A v: h_A[i, j] = h_z[i] v[j]^2 (as (h_z v) v: 0 where h_z is 0, also where v^2
    overflows)."""
    h_out, vector = promote(h_out, vector)
    v = vector.unsqueeze(-2)
    return h_out.unsqueeze(-1) * v * v
