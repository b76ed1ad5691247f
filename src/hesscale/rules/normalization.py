"""Batch normalisation in evaluation mode, an affine map per channel (dim 1):
z = gamma * x_hat + beta with x_hat = (x - running_mean) / sqrt(running_var + eps)."""

from __future__ import annotations

from torch import Tensor

from hesscale.rules.precision import promote, upcast


def _per_channel(values: Tensor, ndim: int) -> Tensor:
    return values.view(1, -1, *([1] * (ndim - 2)))


def _sum_except_channel(t: Tensor) -> Tensor:
    return t.sum([d for d in range(t.dim()) if d != 1])


def batchnorm_eval_input(
    h_out: Tensor, running_var: Tensor, eps: float, weight: Tensor | None
) -> Tensor:
    """h_x = h_z * gamma^2 / (running_var + eps)."""
    h_out, running_var, weight = promote(h_out, running_var, weight)
    scale = 1.0 / (running_var + eps)
    if weight is not None:
        scale = scale * weight.square()
    return h_out * _per_channel(scale, h_out.dim())


def batchnorm_eval_normalised(
    x: Tensor, running_mean: Tensor, running_var: Tensor, eps: float
) -> Tensor:
    """x_hat = (x - running_mean) / sqrt(running_var + eps)."""
    x, running_mean, running_var = promote(x, running_mean, running_var)
    return (x - _per_channel(running_mean, x.dim())) / _per_channel(
        (running_var + eps).sqrt(), x.dim()
    )


def batchnorm_weight(h_out: Tensor, x_hat: Tensor) -> Tensor:
    """h_gamma = sum over batch and space of h_z * x_hat^2."""
    h_out, x_hat = promote(h_out, x_hat)
    return _sum_except_channel(h_out * x_hat.square())


def batchnorm_bias(h_out: Tensor) -> Tensor:
    """h_beta = sum over batch and space of h_z."""
    return _sum_except_channel(upcast(h_out))
