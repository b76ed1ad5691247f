"""Matrix products z = a @ b (also batched: the last two dimensions multiply).

z is bilinear, so with the other factor held fixed each input has no curvature of its own, and
z[i, k] = sum_j a[i, j] b[j, k] links a[i, j] to z[i, k] through the single value b[j, k]:

    h_a = h_z @ (b^2)^T,        h_b = (a^2)^T @ h_z.

The squares and products are computed in float32 where float16 takes part (rules.precision).
"""

from __future__ import annotations

from torch import Tensor

from hesscale.rules.precision import promote


def matmul_left(h_out: Tensor, right: Tensor) -> Tensor:
    """h_a = h_z @ (b * b)^T for z = a @ b."""
    h_out, right = promote(h_out, right)
    return h_out @ right.square().mT


def matmul_right(h_out: Tensor, left: Tensor, transposed: bool = False) -> Tensor:
    """h_b = (a * a)^T @ h_z for z = a @ b.

    ``transposed``: b is stored transposed (nn.Linear's weight enters addmm as W^T); the
    product is then computed as (h_z^T @ a^2)^T, so that h_W comes out in the weight's
    layout."""
    h_out, left = promote(h_out, left)
    if transposed:
        return (h_out.mT @ left.square()).mT
    return left.square().mT @ h_out


def matrix_vector_matrix(h_out: Tensor, vector: Tensor) -> Tensor:
    """z = A v: h_A[i, j] = h_z[i] v[j]^2."""
    h_out, vector = promote(h_out, vector)
    return h_out.unsqueeze(-1) * vector.square().unsqueeze(-2)
