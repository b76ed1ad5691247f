"""Operations that only move, drop or scale entries: Flatten, Identity, ZeroPad2d, Dropout.

Their Jacobian has at most one non-zero entry per row and column pair, so the diagonal is moved
exactly like the gradient, with the entries squared, and the second-order term is zero.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def reshape_input(h_out: Tensor, input_shape: tuple[int, ...]) -> Tensor:
    """Flatten / view: h_x is h_z read back in the input's shape."""
    return h_out.reshape(input_shape)


def zero_pad_input(h_out: Tensor, padding: tuple[int, ...]) -> Tensor:
    """Constant padding (F.pad order: last dim first): h_x is h_z with the padding cut off.
    Negative padding crops, so its inverse pads with zeros."""
    return F.pad(h_out, [-p for p in padding])


def dropout_input(h_out: Tensor, output: Tensor, p: float) -> Tensor:
    """z = x * m / (1 - p) with the mask m recovered from z != 0: h_x = m h_z / (1 - p)^2.

    (An input that was exactly zero is indistinguishable from a dropped one; its h_x is 0.)
    """
    return (output != 0) * h_out / (1 - p) ** 2


def masked_scale_input(h_out: Tensor, mask: Tensor, scale: float) -> Tensor:
    """z = x * m * c for a 0/1 mask m and a number c (dropout: c = 1 / (1 - p)):
    h_x = m c^2 h_z."""
    return h_out * mask * (scale * scale)
