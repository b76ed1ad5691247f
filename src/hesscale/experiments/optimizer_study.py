"""Components of the optimizer study (specs ``optimizers_*``) that the built-ins lack:
scikit-learn's digits with a held-out split, and a small residual CNN with BatchNorm.

The language-model components (the text, the GPT and the LSTM) are in
hesscale.experiments.text; the report is hesscale.experiments.optimizer_report.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hesscale.experiments.tasks import Stream, TaskSettings, load_dataset


def digits_holdout(settings: TaskSettings, /, held_out: int = 297) -> Stream:
    """scikit-learn's 8x8 digits (1797 images, pixels in [0, 1]): the last ``held_out`` images
    are the validation split (``test_batches``), the others a stationary stream of mini-batches."""
    digits = load_dataset("digits")
    if not 0 < held_out < len(digits.targets):
        raise ValueError(
            f"digits_holdout: held_out must be in 1..{len(digits.targets) - 1}, got {held_out}."
        )
    x = digits.inputs(torch.arange(len(digits.targets)))
    y = digits.targets
    cut = len(y) - held_out
    return Stream.from_tensors(x[:cut], y[:cut], settings, n_classes=10, test=(x[cut:], y[cut:]))


class ResidualBlock(nn.Module):
    """relu(x' + bn(conv(relu(bn(conv(x)))))), x' = x or a strided 1x1 convolution of it."""

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.shortcut(x) + self.bn2(self.conv2(y)))


class SmallResNet(nn.Module):
    """A ResNet for small images: a 3x3 stem of ``width`` channels with BatchNorm, a residual
    block at that width, one at 2 x ``width`` and stride 2, global average pooling, a linear
    head. For 1x8x8 digits and width 16: 19,706 parameters."""

    def __init__(self, input_shape: tuple[int, ...], n_outputs: int, width: int = 16) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"SmallResNet needs image inputs (C, H, W), got {input_shape}")
        self.image_shape = tuple(input_shape)
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.blocks = nn.Sequential(
            ResidualBlock(width, width), ResidualBlock(width, 2 * width, stride=2)
        )
        self.head = nn.Linear(2 * width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        features = self.blocks(self.stem(x.reshape(-1, *self.image_shape)))
        return self.head(features.mean(dim=(2, 3)))
