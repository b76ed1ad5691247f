"""The bilinear layer z_k = x1^T W_k x2 + b_k (``torch.nn.Bilinear``; batch dim first).

z is linear in each of x1, x2 and W with the others held fixed, so no input has curvature of its
own, and each input entry reaches z_k through one coefficient: the diagonals are the squared
coefficients weighted by h_z.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bilinear_first_input(h_out: Tensor, weight: Tensor, x2: Tensor) -> Tensor:
    """dz_k/dx1_i = (W_k x2)_i, so h_x1_i = sum_k (W_k x2)_i^2 h_k."""
    return torch.einsum("bk,bki->bi", h_out, torch.einsum("kij,bj->bki", weight, x2).square())


def bilinear_second_input(h_out: Tensor, weight: Tensor, x1: Tensor) -> Tensor:
    """h_x2_j = sum_k (x1^T W_k)_j^2 h_k."""
    return torch.einsum("bk,bkj->bj", h_out, torch.einsum("kij,bi->bkj", weight, x1).square())


def bilinear_weight(h_out: Tensor, x1: Tensor, x2: Tensor) -> Tensor:
    """h_W_kij = sum over the batch of h_k x1_i^2 x2_j^2."""
    return torch.einsum("bk,bi,bj->kij", h_out, x1.square(), x2.square())
