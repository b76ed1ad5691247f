"""Networks by name, sized from the task: ``build_network(name, input_shape, n_outputs)``.

Every network of the experiments is built here: the runs' (by name), the approximation-quality
study's MLP (``fully_connected``) and the cost benchmark's MLP and CNN (``fully_connected``,
``conv_3c3d``). Your own network: a ``NetworkFactory`` (below), named by import path or
registered with ``hesscale.experiments.register_network``; any ``nn.Module`` will do, since
the diagonals come from ``hesscale.backward``, which follows the graph autograd records.

Fully connected networks take hidden sizes 300-150 by default (our reading of the original
study's default) and 64-32 for the ``_small`` variants; ``hidden=`` overrides either. The DeepOBS
architectures follow the DeepOBS test-problem descriptions (TensorFlow 'same' padding of
strided layers is asymmetric: it pads one more at the bottom/right, which we reproduce with
ZeroPad2d; weight decay is the learner's business, not the network's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from hesscale.errors import ComponentError
from hesscale.experiments.components import Registry, describe_object, signature_accepts

FC_DEFAULT_HIDDEN = (300, 150)
FC_SMALL_HIDDEN = (64, 32)
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "leakyrelu": lambda: nn.LeakyReLU(0.01),
    "sigmoid": nn.Sigmoid,
}
FC_ACTIVATIONS = ("relu", "tanh", "leakyrelu")  # the fc_<activation> networks


def activation(name: str) -> nn.Module:
    """A new activation module by name (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation '{name}'. Known: {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


def fully_connected(
    input_shape: Sequence[int], n_outputs: int, hidden: Sequence[int], activation_name: str
) -> nn.Sequential:
    """Linear + activation per hidden size, then a Linear read-out; inputs of more than one
    dimension (images) are flattened first."""
    layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
    width = math.prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), activation(activation_name)]
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    """A fully connected residual network: h_0 = act(W_0 x + b_0), then ``depth`` blocks
    h_i = h_{i-1} + act(W_i h_{i-1} + b_i) of ``width`` units, then logits W h + b. Inputs of
    more than one dimension (images) are flattened first. Not a chain of modules (the
    additions of the skip connections), so its diagonals come from ``hesscale.backward``."""

    def __init__(
        self,
        input_shape: Sequence[int],
        n_outputs: int,
        width: int = 32,
        depth: int = 2,
        activation_name: str = "tanh",
    ) -> None:
        super().__init__()
        if width < 1 or depth < 0:
            raise ValueError(f"residual MLP: width >= 1 and depth >= 0, got {width}, {depth}")
        self.input = nn.Linear(math.prod(input_shape), width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, n_outputs)
        self.act = activation(activation_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.input(x.flatten(1)))
        for block in self.blocks:
            h = h + self.act(block(h))
        return self.head(h)


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


def conv_3c3d(
    input_shape: Sequence[int],
    n_outputs: int,
    width: int = 64,
    depth: int = 3,
    activation_name: str = "relu",
) -> nn.Sequential:
    """DeepOBS's 3c3d, with its width and depth as knobs (the defaults give cifar10_3c3d).

    ``depth`` convolutions with width x (1, 1.5, 2, 2, ...) channels: 5x5 valid, 3x3 valid,
    then 3x3 'same'; each of the first three followed by a 3x3 max-pooling of stride 2 with
    TensorFlow's 'same' padding; then fully connected 512, 256 and the output, with the
    activation after every layer but the last. The padding before pooling is zeros, which
    equals TensorFlow's -inf padding after ReLU (outputs >= 0), DeepOBS's case.
    """
    if depth < 1:
        raise ValueError(f"3c3d depth must be at least 1, got {depth}")
    channels, size, _ = input_shape
    layers: list[nn.Module] = []
    for i in range(depth):
        out = int(round(width * (1, 1.5, 2)[min(i, 2)]))
        kernel, padding = (5, 0) if i == 0 else (3, 0 if i == 1 else 1)
        layers += [nn.Conv2d(channels, out, kernel, padding=padding), activation(activation_name)]
        size = size + 2 * padding - kernel + 1
        if i < 3:
            layers += [_tf_same(size, 3, 2), nn.MaxPool2d(3, 2)]
            size = math.ceil(size / 2)
        channels = out
    layers.append(nn.Flatten())
    flat = _flat_size(nn.Sequential(*layers), input_shape)
    head = [nn.Linear(flat, 512), activation(activation_name)]
    head += [nn.Linear(512, 256), activation(activation_name), nn.Linear(256, n_outputs)]
    return nn.Sequential(*layers, *head)


def cifar10_3c3d(input_shape: Sequence[int], n_outputs: int) -> nn.Sequential:
    """DeepOBS cifar10_3c3d: convs 64 (5x5 valid), 96 (3x3 valid), 128 (3x3 same), each +
    ReLU + 3x3/2 max-pool 'same'; FC 512, FC 256, FC out (ReLU between)."""
    return conv_3c3d(input_shape, n_outputs)


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


def resnet18(input_shape: Sequence[int], n_outputs: int) -> nn.Module:
    """torchvision's ResNet-18 in its CIFAR form: a 3x3 stride-1 stem convolution (64 channels,
    no bias, as many input channels as the task's images) and no max-pooling, for 32x32
    images; ``n_outputs`` classes. Not a chain of modules (residual additions, BatchNorm in
    training mode): its diagonals come from ``hesscale.backward``."""
    try:
        from torchvision.models import resnet18 as torchvision_resnet18
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "the resnet18 network needs torchvision: pip install torchvision", name=error.name
        ) from error
    channels = _image_shape(input_shape, "resnet18")[0]
    net = torchvision_resnet18(weights=None, num_classes=n_outputs)
    net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
    net.maxpool = nn.Identity()
    return net


def _image_shape(input_shape: Sequence[int], name: str) -> tuple[int, ...]:
    if len(input_shape) != 3:
        raise ValueError(
            f"Network '{name}' needs image inputs (C, H, W), got {tuple(input_shape)}."
        )
    return tuple(input_shape)


def _fc(activation: str, default_hidden: tuple[int, ...]):
    def build(input_shape, n_outputs, hidden=None):
        if hidden is not None and (
            not hidden or not all(isinstance(h, int) and h >= 1 for h in hidden)
        ):
            raise ValueError(f"hidden sizes must be integers >= 1, got {list(hidden)}.")
        return fully_connected(input_shape, n_outputs, hidden or default_hidden, activation)

    build.__doc__ = f"Fully connected, {activation}, hidden {default_hidden} unless given."
    return build


def _images_only(builder: Callable[..., nn.Module], name: str) -> Callable[..., nn.Module]:
    def build(input_shape, n_outputs):
        return builder(_image_shape(input_shape, name), n_outputs)

    build.__doc__ = builder.__doc__
    return build


# the contract of a network --------------------------------------------------------------------


class NetworkFactory(Protocol):
    """Builds a run's network, a fresh one per call: ``factory(input_shape, n_outputs,
    **options)``, with ``input_shape`` the shape of one example (e.g. ``(1, 28, 28)``),
    ``n_outputs`` the number of classes (the network's output: (batch, n_outputs) logits) and
    options from ``--network-opt KEY=VALUE`` or a spec's ``network_options`` table. A
    function, or an ``nn.Module`` subclass whose constructor takes these arguments. Any
    ``nn.Module`` will do for learners whose diagonals come from ``hesscale.backward``;
    ``adaggnmc`` (BackPACK) needs a chain of modules (nn.Sequential)."""

    def __call__(
        self, input_shape: tuple[int, ...], n_outputs: int, /, **options: Any
    ) -> nn.Module: ...


def check_network_factory(obj: Any, what: str) -> NetworkFactory:
    """``obj`` if it can be called as ``factory(input_shape, n_outputs)``; else
    ComponentError."""
    expected = (
        "a network factory: a function or nn.Module class called as factory(input_shape, "
        "n_outputs, **options) that returns a new nn.Module"
    )
    if isinstance(obj, nn.Module):
        raise ComponentError(
            f"{what} is an nn.Module instance ({type(obj).__name__}); name the function or "
            f"class that builds it instead (each run needs a fresh network): {expected}."
        )
    if not callable(obj):
        raise ComponentError(f"{what} is {describe_object(obj)}; expected {expected}.")
    problem = signature_accepts(obj, [(1,), 1], {})
    if problem:
        raise ComponentError(
            f"{what} cannot be called as factory(input_shape, n_outputs): {problem}."
        )
    return obj


def check_network_options(factory: NetworkFactory, what: str, options: dict[str, Any]) -> None:
    problem = signature_accepts(factory, [(1,), 1], options)
    if problem:
        raise ComponentError(f"{what} does not take the options {sorted(options)}: {problem}.")


def check_network(model: Any, what: str) -> nn.Module:
    """``model`` if it is an nn.Module with parameters to learn; else ComponentError."""
    if not isinstance(model, nn.Module):
        raise ComponentError(f"{what} returned {describe_object(model)}; expected an nn.Module.")
    if not any(p.requires_grad for p in model.parameters()):
        raise ComponentError(f"{what} returned a {type(model).__name__} without parameters.")
    return model


NETWORKS: Registry[NetworkFactory] = Registry("network", check_network_factory)
for _activation in FC_ACTIVATIONS:
    NETWORKS.register(f"fc_{_activation}", _fc(_activation, FC_DEFAULT_HIDDEN), builtin=True)
    NETWORKS.register(f"fc_{_activation}_small", _fc(_activation, FC_SMALL_HIDDEN), builtin=True)
for _name, _builder in {
    "small_cnn": small_cnn,
    "mnist_2c2d": mnist_2c2d,
    "cifar10_3c3d": cifar10_3c3d,
    "cifar100_allcnnc": cifar100_allcnnc,
    "resnet18": resnet18,
}.items():
    NETWORKS.register(_name, _images_only(_builder, _name), builtin=True)


def build_network(
    name: str,
    input_shape: Sequence[int],
    n_outputs: int,
    hidden: Sequence[int] | None = None,
    **options: Any,
) -> nn.Module:
    """Network ``name`` (a reference, see hesscale.experiments.components) for inputs of
    ``input_shape`` and ``n_outputs`` classes; ``hidden``: the fc networks' hidden sizes."""
    resolved = NETWORKS.resolve(name)
    if hidden is not None:
        options["hidden"] = tuple(hidden)
    what = f"network '{resolved.target}'"
    check_network_options(resolved.value, what, options)
    return check_network(resolved.value(tuple(input_shape), n_outputs, **options), what)
