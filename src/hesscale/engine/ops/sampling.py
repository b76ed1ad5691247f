"""Sampling at arbitrary points: F.grid_sample (formulas: rules.sampling) and the grids of
F.affine_grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hesscale.engine.call import NodeCall
from hesscale.engine.registry import register
from hesscale.internals import saved_value
from hesscale.rules import matmul, sampling
from hesscale.rules.precision import promote

MODE_NAMES = {sampling.BILINEAR: "bilinear", sampling.NEAREST: "nearest",
              sampling.BICUBIC: "bicubic"}  # fmt: skip


def _check_mode(node) -> str | None:
    mode = saved_value(node, "interpolation_mode")
    if mode in (sampling.BILINEAR, sampling.NEAREST):
        return None
    return (
        f"F.grid_sample is supported with mode='bilinear' or 'nearest', not "
        f"mode={MODE_NAMES.get(mode, mode)!r} (bicubic sampling has curvature in the grid that "
        "the rule does not compute)"
    )


@register("GridSampler2DBackward0", "GridSampler3DBackward0", check=_check_mode)
def grid_sample(call: NodeCall):
    """F.grid_sample(input, grid), bilinear (trilinear) or nearest, any padding mode."""
    return _grid_sample(
        call, call.saved("input"), call.saved("grid"), call.saved("interpolation_mode"),
        call.saved("padding_mode"), call.saved("align_corners"),
    )  # fmt: skip


@register("CudnnGridSamplerBackward0")
def cudnn_grid_sample(call: NodeCall):
    """cuDNN's F.grid_sample: bilinear, padding 'zeros', align_corners=True (the only
    configuration torch sends to cuDNN)."""
    return _grid_sample(
        call, call.saved("self"), call.saved("grid"), sampling.BILINEAR, sampling.ZEROS, True
    )


def _grid_sample(call: NodeCall, x, grid, mode: int, padding: int, align_corners: bool):
    h = call.h
    if h is None:
        return None, None
    h, x, grid = promote(h, x, grid)
    return (
        sampling.input_diagonal(h, grid, tuple(x.shape), mode, padding, align_corners)
        if call.needs(0)
        else None,
        sampling.grid_diagonal(h, x, grid, mode, padding, align_corners) if call.needs(1) else None,
    )


@register("AffineGridGeneratorBackward0")
def affine_grid(call: NodeCall):
    """F.affine_grid: grid[b] = B theta[b]^T, B (points x (n + 1)) the normalised base points
    with a column of ones; linear in theta, so h_theta[b] = (h_grid[b]^T (B * B)) (the
    product rule of rules.matmul)."""
    h = call.h
    if h is None:
        return (None,)
    size, align_corners = call.saved("size"), call.saved("align_corners")
    n = len(size) - 2
    identity = torch.eye(n, n + 1, dtype=h.dtype, device=h.device).unsqueeze(0)
    points = F.affine_grid(identity, [1, *size[1:]], align_corners=align_corners).reshape(-1, n)
    base = torch.cat([points, points.new_ones(len(points), 1)], dim=1)
    h_grid = h.reshape(h.shape[0], -1, n)
    return (matmul.matmul_right(h_grid, base).mT,)
