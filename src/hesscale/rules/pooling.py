"""Pooling over the last n = 1, 2 or 3 (spatial) dimensions: max, average and adaptive pools.

Every pool is linear in its input (max pools given the positions of the maxima), with one
Jacobian value per output k: J[k, i] = a_k for the inputs i that output k reads, 0 elsewhere.
So the second-order term is zero and

    h_x[i] = sum_k J[k, i]^2 h_z[k] = sum_{k reads i} a_k^2 h_z[k],

the same for HesScale and HesScaleGN. Since the pooling's vector-Jacobian product is
P^T(v)[i] = sum_{k reads i} a_k v[k], this is h_x = P^T(a * h_z), computed with ATen's own
pooling backward kernels (no loops over samples or windows).

- max pools: a_k = 1 at the window's maximum only, so h_z is routed to the argmax positions and
  summed where windows share their maximum (like the gradient);
- average pools: a_k = 1 / c_k with c_k the divisor torch uses for output k (which depends on
  padding, ceil_mode, count_include_pad and divisor_override);
- adaptive average pools: a_k = 1 / c_k with c_k the window size, the product over dims of
  ceil((o + 1) I / O) - floor(o I / O).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hesscale.internals import adaptive_avg_pool_backward
from hesscale.rules.precision import promote, upcast

Ints = tuple[int, ...]


def max_pool_input(h_out: Tensor, indices: Tensor, input_shape: Ints, spatial_dims: int) -> Tensor:
    """h_x[i] = sum of h_z[k] over the outputs k whose maximum is input i.

    ``indices`` are torch's ``return_indices`` (the output's elements, in any shape or memory
    layout): flat positions of the maxima within each input plane, a plane being the last
    ``spatial_dims`` dims of ``input_shape``.
    """
    h_out = upcast(h_out)
    planes = math.prod(input_shape[: len(input_shape) - spatial_dims])
    h_in = h_out.new_zeros(planes, math.prod(input_shape[len(input_shape) - spatial_dims :]))
    h_in.scatter_add_(1, indices.reshape(planes, -1), h_out.reshape(planes, -1))
    return h_in.reshape(input_shape)


def avg_pool_input(
    h_out: Tensor,
    x: Tensor,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    """z_k = (1 / c_k) sum_{i in window k} x_i  =>  h_x = P^T(h_z / c), P^T the pooling's vjp.

    n = len(kernel_size) spatial dims; ``x`` is the forward input (its shape is what matters).
    """
    h_out, x = promote(h_out, x)
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    factor = avg_pool_factors(x.shape[-len(kernel_size) :], *args, like=h_out)
    return _avg_pool_backward(h_out * factor, x, *args)


def avg_pool_factors(
    input_size: Ints,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
    *,
    like: Tensor,
) -> Tensor:
    """1 / c_k for every output position k (shape: the output's spatial size).

    Taken from torch itself, so every divisor rule is matched: pooling ones gives n_k / c_k
    and pooling ones with divisor 1 gives n_k, the number of real (non-padding) inputs read.
    """
    ones = like.new_ones((1, 1, *input_size))
    pool = (kernel_size, stride, padding, ceil_mode)
    mean = _avg_pool(ones, *pool, count_include_pad, divisor_override)
    count = _avg_pool(ones, *pool, True, 1)
    return torch.where(count > 0, mean / count, 0.0)[0, 0]


def adaptive_avg_pool_input(h_out: Tensor, x: Tensor, spatial_dims: int) -> Tensor:
    """h_x = A^T(h_z / c), A^T the adaptive pooling's vjp, c_k the window size of output k."""
    h_out, x = promote(h_out, x)
    sizes = adaptive_window_sizes(x.shape[-spatial_dims:], h_out.shape[-spatial_dims:], h_out)
    grad = h_out / sizes
    if spatial_dims == 1:  # as 2-d pooling of height 1
        return adaptive_avg_pool_backward(grad.unsqueeze(-2), x.unsqueeze(-2), 2).squeeze(-2)
    return adaptive_avg_pool_backward(grad, x, spatial_dims)


def adaptive_window_sizes(input_size: Ints, output_size: Ints, like: Tensor) -> Tensor:
    """c_k = prod over dims of end - start, start = floor(o I / O), end = ceil((o + 1) I / O)."""
    sizes = like.new_ones(())
    for size_in, size_out in zip(input_size, output_size, strict=True):
        o = torch.arange(size_out, device=like.device)
        window = ((o + 1) * size_in + size_out - 1) // size_out - (o * size_in) // size_out
        sizes = sizes.unsqueeze(-1) * window.to(like.dtype)
    return sizes


# ATen's average pools exist for 2 and 3 spatial dims; 1-d pooling is 2-d pooling of height 1.


def _lift(t: Tensor, kernel_size: Ints, stride: Ints, padding: Ints):
    if len(kernel_size) != 1:
        return t, kernel_size, stride, padding
    return t.unsqueeze(-2), (1, *kernel_size), (1, *stride), (0, *padding)


def _avg_pool(t, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    n = len(kernel_size)
    t, kernel_size, stride, padding = _lift(t, kernel_size, stride, padding)
    pool = F.avg_pool3d if n == 3 else F.avg_pool2d
    out = pool(t, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return out.squeeze(-2) if n == 1 else out


def _avg_pool_backward(
    grad, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    n = len(kernel_size)
    grad = grad.unsqueeze(-2) if n == 1 else grad
    x, kernel_size, stride, padding = _lift(x, kernel_size, stride, padding)
    backward = torch.ops.aten.avg_pool3d_backward if n == 3 else torch.ops.aten.avg_pool2d_backward
    h_in = backward(
        grad, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    return h_in.squeeze(-2) if n == 1 else h_in


def separable_linear_input(h_out: Tensor, matrices: list[Tensor]) -> Tensor:
    """z = x multiplied along each of its last n dims by a matrix A_d (out_d x in_d): linear,
    interpolation (bilinear, bicubic, trilinear) being such a product of one-dimensional
    interpolations. J[k, i] = prod_d A_d[k_d, i_d], so J^2 is the product of the squares and

        h_x = h_z multiplied along each dim d by (A_d^2)^T,

    with no curvature (z is linear in x)."""
    (h,) = promote(h_out)
    first = h.dim() - len(matrices)
    for offset, matrix in enumerate(matrices):
        dim = first + offset
        h = torch.tensordot(h, matrix.to(h.dtype).square(), dims=([dim], [0])).movedim(-1, dim)
    return h
