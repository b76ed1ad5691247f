"""Affine map z = x W^T + b (``torch.nn.Linear``); x has shape (N, *, in). And the bilinear
layer z_k = x1^T W_k x2 + b_k (``torch.nn.Bilinear``)."""

from __future__ import annotations

import torch
from torch import Tensor

from hesscale.rules.matmul import matmul_left, matmul_right
from hesscale.rules.precision import upcast


def linear_input(h_out: Tensor, weight: Tensor) -> Tensor:
    """h_x = h_z @ (W * W): each input reaches output k through the single weight W[k, i]
    (the matrix product's rule, rules.matmul, for z = x @ W^T)."""
    return matmul_left(h_out, weight.T)


def linear_weight(h_out: Tensor, x: Tensor) -> Tensor:
    """h_W[k, i] = sum over batch (and extra leading dims) of h_z[k] * x[i]^2 (rules.matmul's
    h_b for z = x @ W^T, in W's layout)."""
    h_out, x = h_out.reshape(-1, h_out.shape[-1]), x.reshape(-1, x.shape[-1])
    return matmul_right(h_out, x, transposed=True).mT


def linear_bias(h_out: Tensor) -> Tensor:
    """h_b = h_z summed over batch (and extra leading dims)."""
    return upcast(h_out).reshape(-1, h_out.shape[-1]).sum(0)


def bilinear_first_input(h_out: Tensor, weight: Tensor, x2: Tensor) -> Tensor:
    """z_k = x1^T W_k x2 + b_k (nn.Bilinear; batch dim first): dz_k/dx1_i = (W_k x2)_i, so
    h_x1_i = sum_k (W_k x2)_i^2 h_k; z is linear in x1 (no curvature)."""
    return torch.einsum("bk,bki->bi", h_out, torch.einsum("kij,bj->bki", weight, x2).square())


def bilinear_second_input(h_out: Tensor, weight: Tensor, x1: Tensor) -> Tensor:
    """h_x2_j = sum_k (x1^T W_k)_j^2 h_k."""
    return torch.einsum("bk,bkj->bj", h_out, torch.einsum("kij,bi->bkj", weight, x1).square())


def bilinear_weight(h_out: Tensor, x1: Tensor, x2: Tensor) -> Tensor:
    """h_W_kij = sum over the batch of h_k x1_i^2 x2_j^2."""
    return torch.einsum("bk,bi,bj->kij", h_out, x1.square(), x2.square())
