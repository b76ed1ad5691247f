"""Sampling at arbitrary points: F.grid_sample, bilinear (trilinear) or nearest.

For an input x (N, C, *S) with n = 2 or 3 spatial dims and a grid (N, *P, n) of normalised
points (last entry the coordinate of the last spatial dim), each output entry is

    z[b, c, p] = sum_corners w(corner, p) x[b, c, corner],

with the corners around the point's source location u (per dim: u = ((g + 1) / 2)(size - 1)
with align_corners, ((g + 1) size - 1) / 2 without; then clipped for padding 'border', reflected
and clipped for 'reflection') and w the product over dims of 1 - |u - corner| (bilinear), or
the one nearest corner (rounded half to even) with w = 1 (nearest). With padding 'zeros'
corners outside the input contribute 0.

z is linear in x, so
    h_x[b, c, s] = sum_p sum_{corners at s} w(corner, p)^2 h_z[b, c, p];
and w.r.t. the grid, with the derivative dz[b, c, p] / dg[b, p, k] of each channel,
    h_g[b, p, k] = sum_c (dz[b, c, p] / dg[b, p, k])^2 h_z[b, c, p],
as z is piecewise linear in each coordinate (bilinear: linear within a cell in each coordinate
alone; nearest: constant), so d^2 z / dg_k^2 = 0 wherever it exists (the mixed derivatives
are off the diagonal). Bicubic sampling has curvature in the grid and is not covered.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

# torch's integer codes for F.grid_sample's modes (saved by the autograd node)
BILINEAR, NEAREST, BICUBIC = 0, 1, 2
ZEROS, BORDER, REFLECTION = 0, 1, 2


def source_coordinates(grid: Tensor, size: int, padding: int, align_corners: bool) -> Tensor:
    """The input location u of each normalised coordinate (one dim): unnormalised, then
    clipped ('border') or reflected into the input and clipped ('reflection')."""
    if align_corners:
        u = (grid + 1) / 2 * (size - 1)
    else:
        u = ((grid + 1) * size - 1) / 2
    if padding == BORDER:
        return u.clamp(0, size - 1)
    if padding == REFLECTION:
        low, high = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
        return _reflect(u, low, high).clamp(0, size - 1)
    return u


def _reflect(u: Tensor, low: float, high: float) -> Tensor:
    """u reflected at low and high until it lies in [low, high]."""
    span = high - low
    if span <= 0:
        return torch.zeros_like(u)
    distance = (u - low).abs()
    flips = torch.floor(distance / span)
    extra = distance - flips * span
    return torch.where(flips.remainder(2) == 0, low + extra, high - extra)


def input_diagonal(
    h_out: Tensor, grid: Tensor, input_shape: tuple[int, ...], mode: int, padding: int,
    align_corners: bool,
) -> Tensor:  # fmt: skip
    """h_x = sum over the points of w^2 h_z, scattered to the corners (bilinear / nearest)."""
    n = grid.shape[-1]
    batch, channels, sizes = input_shape[0], input_shape[1], input_shape[2:]
    points = math.prod(grid.shape[1:-1])
    # per dim (first spatial dim first): source location of each point, (N, points)
    locations = [
        source_coordinates(
            grid[..., n - 1 - d].reshape(batch, points), sizes[d], padding, align_corners
        )  # fmt: skip
        for d in range(n)
    ]
    if mode == NEAREST:  # round half to even, as torch does; the one corner, weight 1
        corner_sets = [[(u.round(), torch.ones_like(u))] for u in locations]
    else:
        corner_sets = []
        for u in locations:
            below = u.floor()
            above_weight = u - below
            corner_sets.append([(below, 1 - above_weight), (below + 1, above_weight)])
    h = h_out.reshape(batch, channels, points)
    out = h.new_zeros(batch, channels, math.prod(sizes))
    strides = [math.prod(sizes[d + 1 :]) for d in range(n)]
    for corner in itertools.product(*corner_sets):
        index = torch.zeros_like(locations[0], dtype=torch.long)
        squared_weight = torch.ones_like(locations[0])
        inside = torch.ones_like(locations[0], dtype=torch.bool)
        for d, (position, weight) in enumerate(corner):
            inside &= (position >= 0) & (position <= sizes[d] - 1)
            index += position.clamp(0, sizes[d] - 1).long() * strides[d]
            squared_weight *= weight.square()
        squared_weight = torch.where(inside, squared_weight, 0)  # 'zeros': nothing from outside
        contribution = h * squared_weight.unsqueeze(1)
        out.scatter_add_(2, index.unsqueeze(1).expand(batch, channels, points), contribution)
    return out.reshape(input_shape)


def grid_diagonal(
    h_out: Tensor, x: Tensor, grid: Tensor, mode: int, padding: int, align_corners: bool
) -> Tensor:
    """h_g = sum_c (dz_c / dg)^2 h_z, each channel's derivative from torch's own grid sampler
    backward kernel, run on the channels as separate batch entries with a gradient of ones."""
    batch, channels = x.shape[:2]
    per_channel_input = x.reshape(batch * channels, 1, *x.shape[2:])
    per_channel_grid = grid.repeat_interleave(channels, dim=0)
    ones = h_out.new_ones(batch * channels, 1, *h_out.shape[2:])
    backward = (
        torch.ops.aten.grid_sampler_2d_backward
        if grid.shape[-1] == 2
        else torch.ops.aten.grid_sampler_3d_backward
    )
    _, derivative = backward(
        ones, per_channel_input, per_channel_grid, mode, padding, align_corners, [False, True]
    )  # (N * C, *P, n): dz_c / dg
    derivative = derivative.reshape(batch, channels, *grid.shape[1:])
    return (derivative.square() * h_out.unsqueeze(-1)).sum(1)
