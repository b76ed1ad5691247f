"""Affine map z = x W^T + b (``torch.nn.Linear``); x has shape (N, *, in)."""

from __future__ import annotations

from torch import Tensor

from hesscale.rules.precision import promote, upcast


def linear_input(h_out: Tensor, weight: Tensor) -> Tensor:
    """h_x = h_z @ (W * W): each input reaches output k through the single weight W[k, i]."""
    h_out, weight = promote(h_out, weight)
    return h_out @ weight.square()


def linear_weight(h_out: Tensor, x: Tensor) -> Tensor:
    """h_W[k, i] = sum over batch (and extra leading dims) of h_z[k] * x[i]^2."""
    h_out, x = promote(h_out, x)
    return h_out.reshape(-1, h_out.shape[-1]).T @ x.square().reshape(-1, x.shape[-1])


def linear_bias(h_out: Tensor) -> Tensor:
    """h_b = h_z summed over batch (and extra leading dims)."""
    return upcast(h_out).reshape(-1, h_out.shape[-1]).sum(0)
