"""Adaptors for max, average and adaptive pools (1d/2d/3d), and nn.Unflatten."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _ntuple

from hesscale.extensions.base import ModuleAdaptor
from hesscale.rules import pooling, shape


class MaxPool(ModuleAdaptor):
    """Max pools; with return_indices=True BackPACK keeps the values, which is all we need."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial_dims - 1]

    def indices(self, module: nn.Module, x: Tensor) -> Tensor:
        """The positions of the maxima, recomputed exactly as the forward pass chose them."""
        return self.pool(
            x,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            ceil_mode=module.ceil_mode,
            return_indices=True,
        )[1]

    def input_diag(self, module, h_out, g_out):
        x = module.input0
        return pooling.max_pool_input(h_out, self.indices(module, x), x.shape, self.spatial_dims)


class AdaptiveMaxPool(MaxPool):
    def indices(self, module: nn.Module, x: Tensor) -> Tensor:
        pool = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)
        output_size = module.output.shape[-self.spatial_dims :]  # resolves None entries
        return pool[self.spatial_dims - 1](x, output_size, return_indices=True)[1]


class AvgPool(ModuleAdaptor):
    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims

    def input_diag(self, module, h_out, g_out):
        n = _ntuple(self.spatial_dims)
        return pooling.avg_pool_input(
            h_out,
            module.input0,
            n(module.kernel_size),
            n(module.stride),
            n(module.padding),
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
