"""Convolutions and transposed convolutions of any dimension (``torch.nn.ConvNd``,
``torch.nn.ConvTransposeNd``, N = 1, 2, 3): z = conv(x, W) + b.

Why squaring is exact. A convolution is bilinear in (x, W), so every second derivative
d^2 z_k / dx^2 and d^2 z_k / dW^2 is zero and only the Gauss-Newton part diag(J^T diag(h_z) J)
remains, in HesScale and HesScaleGN alike. An output entry z[o, p] and an input entry x[c, q]
are linked by at most one weight: for a convolution z[o, p] sums x[c, s p + d k - pad] W[o, c, k],
for a transposed one z[o, p] sums x[c, q] W[c, o, k] over s q + d k - pad = p, and in both
cases (p, q) fixes the kernel offset k (d k = p + pad - s q, or the same with p and q swapped).
Hence the Jacobian entry is dz[o, p] / dx[c, q] = W[o, c, k] (or 0), its square is W[o, c, k]^2,
and

    h_x = sum_{o, p} h_z[o, p] (dz[o, p] / dx)^2 = (backward-data of the convolution)(h_z, W^2),

i.e. the same operation that turns the gradient g_z into g_x, applied to h_z with squared
weights. Likewise z[o, p] depends on the weight W[o, c, k] only through its single term
x[c, s p + d k - pad] W[o, c, k], so dz[o, p] / dW[o, c, k] = that input entry, and

    h_W = (backward-weight of the convolution)(h_z, x^2),

summed over the batch like the weight gradient. Each output depends on one bias entry with
derivative 1: h_b[o] = sum of h_z[:, o, ...] over batch and space.

Both come from ATen's ``convolution_backward`` (cuDNN / MKLDNN kernels where available), in one
call when both are wanted: no unfolding, no loops over samples, one generic implementation for
all dimensions and for transposed convolutions. Zero padding that is larger after than before
(``padding='same'`` with an even effective kernel) is handled by padding the input with the
excess zeros explicitly, as torch does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hesscale.internals import is_concrete_cpu
from hesscale.rules.matmul import SQUARE_SAFE, known_finite
from hesscale.rules.precision import promote, upcast


@dataclass(frozen=True)
class ConvGeometry:
    """How a convolution maps its input to its output, one entry per spatial dimension.

    ``padding`` holds the zeros added (before, after) each spatial dimension of the input of a
    convolution; for a transposed convolution the two must be equal (torch's ``padding``).
    ``output_padding`` only applies to transposed convolutions.
    """

    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int = 1
    transposed: bool = False
    output_padding: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.stride)
        if len(self.padding) != n or len(self.dilation) != n:
            raise ValueError(f"stride, padding and dilation need one entry per dimension: {self}")
        if self.transposed and any(before != after for before, after in self.padding):
            raise ValueError(f"A transposed convolution pads symmetrically: {self}")
        if self.output_padding is not None and len(self.output_padding) != n:
            raise ValueError(f"output_padding needs one entry per dimension: {self}")


def same_padding(
    kernel_size: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    """torch's ``padding='same'`` (stride 1): d (k - 1) zeros in total, the odd one after."""
    total = [d * (k - 1) for k, d in zip(kernel_size, dilation, strict=True)]
    return tuple((t // 2, t - t // 2) for t in total)


def _batched(h_out: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Add a batch dimension to unbatched (C, *spatial) inputs."""
    if x.dim() == weight.dim():
        return h_out, x, True
    return h_out.unsqueeze(0), x.unsqueeze(0), False


def _split_padding(geometry: ConvGeometry) -> tuple[list[int], list[tuple[int, int]]]:
    """Symmetric padding the convolution op applies, and the excess (before, after) per dim."""
    symmetric = [min(pair) for pair in geometry.padding]
    excess = [(b - s, a - s) for (b, a), s in zip(geometry.padding, symmetric, strict=True)]
    return symmetric, excess


def conv_diagonals(
    h_out: Tensor,
    x: Tensor,
    weight: Tensor,
    geometry: ConvGeometry,
    wants_input: bool = True,
    wants_weight: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """(h_x, h_W) = (conv-backward-data(h_z, W^2), conv-backward-weight(h_z, x^2)), each only
    if wanted (else None), h_W summed over the batch.

    Backward-data reads only the output gradient and the weight, backward-weight only the
    output gradient and the input, so one call of ATen's ``convolution_backward`` with x^2 as
    its input and W^2 as its weight computes both (as one backward pass computes both
    gradients). ``x`` is the forward input, batched (N, C, *spatial) or unbatched.

    x^2 is formed per input channel as (x / c)^2 c^2 (rules.matmul.scaled_square), except on
    the CPU, where x^2 is tried as it is and kept when h_W comes out finite (an overflowed
    square would make it inf or NaN): one read of h_W instead of x.
    """
    if wants_weight and is_concrete_cpu(x):
        result = _conv_diagonals(h_out, x, weight, geometry, wants_input, wants_weight, False)
        if known_finite(result[1]):
            return result
    return _conv_diagonals(h_out, x, weight, geometry, wants_input, wants_weight, True)


def _conv_diagonals(
    h_out: Tensor,
    x: Tensor,
    weight: Tensor,
    geometry: ConvGeometry,
    wants_input: bool,
    wants_weight: bool,
    rescale: bool,
) -> tuple[Tensor | None, Tensor | None]:
    h_out, x, weight = promote(h_out, x, weight)
    h_out, x, batched = _batched(h_out, x, weight)
    n = len(geometry.stride)
    symmetric, excess = _split_padding(geometry)
    pads = any(before or after for before, after in excess)
    channel_max = None  # None: c = 1 for every channel
    if wants_weight:  # x^2 = (x / c)^2 c^2 per input channel (rules.matmul.scaled_square)
        if not rescale:
            x = x.square()
        else:
            channel_max = (
                x.abs().amax([0, *range(2, x.dim())]).div_(SQUARE_SAFE)
                if x.numel()
                else x.new_ones(1)
            )
            channel_max = channel_max.clamp_(min=1).expand(x.shape[1])
            x = (x / channel_max.view(1, -1, *[1] * n)).square_()
        if pads:
            x = F.pad(x, [v for pair in reversed(excess) for v in pair])
    elif pads:  # only the shape matters
        padded = [s + b + a for s, (b, a) in zip(x.shape[2:], excess, strict=True)]
        x = h_out.new_empty(1).expand(*x.shape[:2], *padded)
    full_weight_shape = weight.shape
    taps = None if pads else _taps_reading_input(x.shape[2:], h_out.shape[2:], weight, geometry)
    if taps is not None:  # the same function of x with the kernel cropped to these taps
        weight, symmetric = weight[(slice(None), slice(None), *taps.kernel)], taps.padding
    if wants_input:
        weight = weight.square()
    h_in, h_weight, _ = torch.ops.aten.convolution_backward(
        h_out, x, weight, None, list(geometry.stride), symmetric, list(geometry.dilation),
        geometry.transposed, list(geometry.output_padding or (0,) * n), geometry.groups,
        [wants_input, wants_weight, False],
    )  # fmt: skip
    if h_weight is not None and channel_max is not None:
        factor = _per_weight_entry(channel_max, h_weight.shape, geometry)
        h_weight = h_weight.mul_(factor.square().clamp_(max=torch.finfo(factor.dtype).max))
    if taps is not None and h_weight is not None:  # the other taps only ever read zeros
        cropped, h_weight = h_weight, h_weight.new_zeros(full_weight_shape)
        h_weight[(slice(None), slice(None), *taps.kernel)] = cropped
    if h_in is not None:
        for dim, (before, after) in enumerate(excess, start=2):
            h_in = h_in.narrow(dim, before, h_in.shape[dim] - before - after)
        if not batched:
            h_in = h_in.squeeze(0)
    return h_in, h_weight


class Taps(NamedTuple):
    kernel: tuple[slice, ...]  # the kernel taps kept, per spatial dimension
    padding: list[int]  # the (symmetric) padding of the cropped convolution


def _per_weight_entry(channel_max: Tensor, weight_shape, geometry: ConvGeometry) -> Tensor:
    """The input channel's scale for each weight entry: W[o, c] (c within o's group) reads
    input channel group(o) * C_g + c; a transposed convolution's W[c, o] reads channel c."""
    n = len(weight_shape) - 2
    if geometry.transposed:
        return channel_max.view(-1, 1, *[1] * n)
    out_channels, per_group = weight_shape[0], weight_shape[1]
    group = torch.arange(out_channels, device=channel_max.device) // (
        out_channels // geometry.groups
    )
    channel = group[:, None] * per_group + torch.arange(per_group, device=channel_max.device)
    return channel_max[channel].view(out_channels, per_group, *[1] * n)


def _taps_reading_input(
    size_in: Sequence[int], size_out: Sequence[int], weight: Tensor, geometry: ConvGeometry
) -> Taps | None:
    """Where padding is as wide as the input is small (e.g. a 3x3 kernel with padding 1 on a
    1x1 input, as in ResNet's last stage on 32x32 images), some kernel taps read only padding
    zeros at every output position: their weight diagonal is 0 and they add nothing to the
    input's. Cropping the kernel to the taps that read the input (and the padding to match)
    gives the same function of x at a fraction of the cost. Returns None when no tap can be
    cropped, or the cropped padding would not be symmetric (ATen's convolution needs that)."""
    if geometry.transposed or not any(pad for pad, _ in geometry.padding):
        return None  # without padding every tap reads the input somewhere
    kernel, padding = [], []
    for size, out, k_size, s, d, (pad, _) in zip(
        size_in, size_out, weight.shape[2:], geometry.stride, geometry.dilation,
        geometry.padding, strict=True,
    ):  # fmt: skip
        # tap k reads input entry s p + d k - pad at output position p = 0 .. out - 1
        reads = [
            k
            for k in range(k_size)
            if _multiple_in(s, max(pad - d * k, 0), min(size - 1 + pad - d * k, s * (out - 1)))
        ]
        if not reads:
            return None
        first, last = reads[0], reads[-1]
        before, after = pad - d * first, pad - d * (k_size - 1 - last)
        if before != after or before < 0:
            return None
        kernel.append(slice(first, last + 1))
        padding.append(before)
    if all(k.stop - k.start == k_size for k, k_size in zip(kernel, weight.shape[2:], strict=True)):
        return None
    return Taps(tuple(kernel), padding)


def _multiple_in(step: int, low: int, high: int) -> bool:
    """Whether some multiple of ``step`` lies in [low, high] (low >= 0)."""
    return -(-low // step) * step <= high


def conv_input(h_out: Tensor, x: Tensor, weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """h_x = conv-backward-data(h_z, W^2): the gradient map applied to h_z with squared weights
    (``x`` supplies only the shape and memory layout)."""
    return conv_diagonals(h_out, x, weight, geometry, wants_weight=False)[0]


def conv_weight(h_out: Tensor, x: Tensor, weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """h_W = conv-backward-weight(h_z, x^2), summed over the batch (``weight`` supplies only the
    shape)."""
    return conv_diagonals(h_out, x, weight, geometry, wants_input=False)[1]


def conv_bias(h_out: Tensor, spatial_dims: int) -> Tensor:
    """h_b[o] = sum of h_z over batch (if any) and the ``spatial_dims`` trailing dimensions."""
    channel_dim = h_out.dim() - spatial_dims - 1
    return upcast(h_out).sum([d for d in range(h_out.dim()) if d != channel_dim])
