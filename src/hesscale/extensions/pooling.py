"""Adaptors for max, average and adaptive pools (1d/2d/3d), and nn.Unflatten."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hesscale.extensions.base import ModuleAdaptor
from hesscale.rules import pooling, shape


class MaxPool(ModuleAdaptor):
    """Max pools; with return_indices=True BackPACK keeps the values, which is all we need."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims

    def indices(self, module: nn.Module, x: Tensor) -> Tensor:
        """The positions of the maxima, recomputed exactly as the forward pass chose them."""
        n = self.spatial_dims
        names = ("kernel_size", "stride", "padding", "dilation")
        args = [_per_dim(getattr(module, name), n) for name in names]
        if n == 1:  # as 2-d pooling of height 1, like torch's own 1-d max pool
            args = [(neutral, *a) for neutral, a in zip((1, 1, 0, 1), args, strict=True)]
        pool = F.max_pool3d if n == 3 else F.max_pool2d
        x = _fast_layout(x, n)
        return pool(x, *args, ceil_mode=module.ceil_mode, return_indices=True)[1]

    def input_diag(self, module, h_out, g_out):
        x = module.input0
        return pooling.max_pool_input(h_out, self.indices(module, x), x.shape, self.spatial_dims)


class AdaptiveMaxPool(MaxPool):
    def indices(self, module: nn.Module, x: Tensor) -> Tensor:
        n = self.spatial_dims
        output_size = tuple(module.output.shape[-n:])  # resolves None entries
        if n == 1:
            output_size = (1, *output_size)
        pool = F.adaptive_max_pool3d if n == 3 else F.adaptive_max_pool2d
        return pool(_fast_layout(x, n), output_size, return_indices=True)[1]


def _per_dim(value: int | tuple[int, ...], spatial_dims: int) -> tuple[int, ...]:
    """A pooling hyperparameter with one entry per spatial dim (torch accepts a single int)."""
    return tuple(value) if isinstance(value, tuple | list) else (value,) * spatial_dims


def _fast_layout(x: Tensor, spatial_dims: int) -> Tensor:
    """x as (N, C, *spatial) for 2-d or 3-d pooling (1-d: height 1), channels-last on the CPU.

    torch's CPU max pools are several times faster in channels-last memory; the indices they
    return (flat positions within each plane, in the output's shape up to the lifts) and their
    choice among ties and NaNs do not depend on the layout.
    """
    x = x.reshape(-1, *x.shape[-spatial_dims - 1 :])  # unbatched -> batch of one
    if spatial_dims == 1:
        x = x.unsqueeze(-2)
    if x.device.type != "cpu":
        return x
    layout = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return x.contiguous(memory_format=layout)


class AvgPool(ModuleAdaptor):
    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims

    def input_diag(self, module, h_out, g_out):
        n = self.spatial_dims
        return pooling.avg_pool_input(
            h_out,
            module.input0,
            _per_dim(module.kernel_size, n),
            _per_dim(module.stride, n),
            _per_dim(module.padding, n),
            module.ceil_mode,
            module.count_include_pad,
            getattr(module, "divisor_override", None),  # AvgPool1d has none
        )


class AdaptiveAvgPool(AvgPool):
    def input_diag(self, module, h_out, g_out):
        return pooling.adaptive_avg_pool_input(h_out, module.input0, self.spatial_dims)


class Unflatten(ModuleAdaptor):
    def input_diag(self, module, h_out, g_out):
        return shape.reshape_input(h_out, module.input0.shape)


ADAPTORS = {
    nn.MaxPool1d: MaxPool(1),
    nn.MaxPool2d: MaxPool(2),
    nn.MaxPool3d: MaxPool(3),
    nn.AdaptiveMaxPool1d: AdaptiveMaxPool(1),
    nn.AdaptiveMaxPool2d: AdaptiveMaxPool(2),
    nn.AdaptiveMaxPool3d: AdaptiveMaxPool(3),
    nn.AvgPool1d: AvgPool(1),
    nn.AvgPool2d: AvgPool(2),
    nn.AvgPool3d: AvgPool(3),
    nn.AdaptiveAvgPool1d: AdaptiveAvgPool(1),
    nn.AdaptiveAvgPool2d: AdaptiveAvgPool(2),
    nn.AdaptiveAvgPool3d: AdaptiveAvgPool(3),
    nn.Unflatten: Unflatten(),
}
