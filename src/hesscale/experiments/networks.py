"""Networks by name, sized from the task: ``build_network(name, input_shape, n_outputs)``.

Fully connected networks take hidden sizes 300-150 by default (our reading of the original
study's default) and 64-32 for the ``_small`` variants; ``hidden=`` overrides either. The DeepOBS
architectures follow the DeepOBS test-problem descriptions (TensorFlow 'same' padding of
strided layers is asymmetric: it pads one more at the bottom/right, which we reproduce with
ZeroPad2d; weight decay is the learner's business, not the network's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

FC_DEFAULT_HIDDEN = (300, 150)
FC_SMALL_HIDDEN = (64, 32)
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "leakyrelu": lambda: nn.LeakyReLU(0.01),
}


def fully_connected(
    input_shape: Sequence[int], n_outputs: int, hidden: Sequence[int], activation: str
) -> nn.Sequential:
    """Flatten, then Linear + activation per hidden size, then a Linear read-out."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), _ACTIVATIONS[activation]()]
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def _flat_size(features: nn.Module, input_shape: Sequence[int]) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *input_shape)).numel()


def small_cnn(input_shape: Sequence[int], n_outputs: int) -> nn.Sequential:
    """Two 3x3 conv (8, 16 channels) + ReLU + 2x2 max-pool blocks, Linear(64), Linear."""
    channels = input_shape[0]
    features = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    width = _flat_size(features, input_shape)
    return nn.Sequential(*features, nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, n_outputs))


def _tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) for one spatial dimension."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _tf_same(size: int, kernel: int, stride: int) -> nn.Module:
    before, after = _tf_same_pad(size, kernel, stride)
    return nn.ZeroPad2d((before, after, before, after))


def mnist_2c2d(input_shape: Sequence[int], n_outputs: int) -> nn.Sequential:
    """DeepOBS mnist_2c2d: 2 x (5x5 conv 'same' + ReLU + 2x2 max-pool), FC 1024, FC out."""
    channels, height, _ = input_shape
    features = nn.Sequential(
        nn.Conv2d(channels, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
    )
    width = _flat_size(features, input_shape)
    return nn.Sequential(*features, nn.Linear(width, 1024), nn.ReLU(), nn.Linear(1024, n_outputs))


def cifar10_3c3d(input_shape: Sequence[int], n_outputs: int) -> nn.Sequential:
    """DeepOBS cifar10_3c3d: convs 64 (5x5 valid), 96 (3x3 valid), 128 (3x3 same), each +
    ReLU + 3x3/2 max-pool 'same'; FC 512, FC 256, FC out (ReLU between)."""
    channels, size, _ = input_shape
    layers: list[nn.Module] = []
    for conv_in, conv_out, kernel, padding in (
        (channels, 64, 5, 0),
        (64, 96, 3, 0),
        (96, 128, 3, 1),
    ):
        layers += [nn.Conv2d(conv_in, conv_out, kernel, padding=padding), nn.ReLU()]
        size = size + 2 * padding - kernel + 1
        # zero padding equals TF's -inf padding here: inputs are ReLU outputs, >= 0
        layers += [_tf_same(size, 3, 2), nn.MaxPool2d(3, 2)]
        size = math.ceil(size / 2)
    layers.append(nn.Flatten())
    width = _flat_size(nn.Sequential(*layers), input_shape)
    head = [nn.Linear(width, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU()]
    return nn.Sequential(*layers, *head, nn.Linear(256, n_outputs))


def cifar100_allcnnc(input_shape: Sequence[int], n_outputs: int) -> nn.Sequential:
    """DeepOBS cifar100_allcnnc (All-CNN-C): dropout 0.2; 3x3 convs 96, 96, 96/2; dropout 0.5;
    192, 192, 192/2; dropout 0.5; 192 (3x3 valid), 192 (1x1), out (1x1); ReLU after every conv;
    global average pooling."""
    channels, size, _ = input_shape
    layers: list[nn.Module] = [nn.Dropout(0.2)]
    for block_in, width in ((channels, 96), (96, 192)):
        layers += [nn.Conv2d(block_in, width, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers += [_tf_same(size, 3, 2), nn.Conv2d(width, width, 3, stride=2), nn.ReLU()]
        layers.append(nn.Dropout(0.5))
        size = math.ceil(size / 2)
    layers += [nn.Conv2d(192, 192, 3), nn.ReLU(), nn.Conv2d(192, 192, 1), nn.ReLU()]
    layers += [nn.Conv2d(192, n_outputs, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def _fc(activation: str, default_hidden: tuple[int, ...]):
    def build(input_shape, n_outputs, hidden=None):
        return fully_connected(input_shape, n_outputs, hidden or default_hidden, activation)

    build.__doc__ = f"Fully connected, {activation}, hidden {default_hidden} unless given."
    return build


NETWORKS: dict[str, Callable[..., nn.Sequential]] = {
    **{f"fc_{a}": _fc(a, FC_DEFAULT_HIDDEN) for a in _ACTIVATIONS},
    **{f"fc_{a}_small": _fc(a, FC_SMALL_HIDDEN) for a in _ACTIVATIONS},
    "small_cnn": small_cnn,
    "mnist_2c2d": mnist_2c2d,
    "cifar10_3c3d": cifar10_3c3d,
    "cifar100_allcnnc": cifar100_allcnnc,
}


def build_network(
    name: str,
    input_shape: Sequence[int],
    n_outputs: int,
    hidden: Sequence[int] | None = None,
) -> nn.Sequential:
    """Network ``name`` for inputs of ``input_shape`` (C, H, W) and ``n_outputs`` classes."""
    if name not in NETWORKS:
        raise ValueError(f"Unknown network '{name}'. Known networks: {', '.join(NETWORKS)}.")
    if hidden is not None:
        if not name.startswith("fc_"):
            raise ValueError(f"hidden sizes apply to fully connected networks only, not '{name}'.")
        return NETWORKS[name](input_shape, n_outputs, tuple(hidden))
    if len(input_shape) != 3 and not name.startswith("fc_"):
        raise ValueError(
            f"Network '{name}' needs image inputs (C, H, W), got {tuple(input_shape)}."
        )
    return NETWORKS[name](tuple(input_shape), n_outputs)
