"""The models the cost study measures, built by hesscale.experiments.networks, and the
problem (model, mini-batch) every method gets a copy of."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hesscale.experiments import networks

N_CLASSES = 10


def mlp(width: int = 512, depth: int = 2, activation: str = "tanh") -> nn.Sequential:
    """784 -> ``depth`` hidden layers of ``width`` units -> 10 (the MNIST-sized MLP)."""
    return networks.fully_connected((784,), N_CLASSES, [width] * depth, activation)


def cnn(width: int = 64, depth: int = 3, activation: str = "relu") -> nn.Sequential:
    """DeepOBS's 3c3d on 3x32x32 inputs, ``width`` x (1, 1.5, 2, 2, ...) channels in ``depth``
    convolutions (``networks.conv_3c3d``; ``width=64, depth=3`` is cifar10_3c3d itself)."""
    return networks.conv_3c3d((3, 32, 32), N_CLASSES, width, depth, activation)


MODELS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...], str]] = {
    # name: (constructor, input shape without batch, default activation)
    "mlp": (mlp, (784,), "tanh"),
    "cnn": (cnn, (3, 32, 32), "relu"),
}
ACTIVATIONS = tuple(networks.ACTIVATIONS)


@dataclass
class Problem:
    """One configuration: the initial model, a loss and a mini-batch (all on one device)."""

    model: nn.Module
    x: Tensor
    y: Tensor

    def copy(self, extended: bool) -> tuple[nn.Module, nn.Module]:
        model, loss_fn = copy.deepcopy(self.model), nn.CrossEntropyLoss()
        if extended:
            from backpack import extend

            model, loss_fn = extend(model), extend(loss_fn)
        return model, loss_fn


def make_problem(
    model: str,
    width: int,
    depth: int,
    batch: int,
    activation: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
) -> Problem:
    """Model ``model`` (initialised from ``seed``) and a random mini-batch of ``batch``."""
    constructor, input_shape, default_activation = MODELS[model]
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(seed)
    with _seeded(seed):
        net = constructor(width, depth, activation or default_activation)
    x = torch.randn(batch, *input_shape, generator=generator, dtype=torch_dtype)
    y = torch.randint(0, N_CLASSES, (batch,), generator=generator)
    return Problem(net.to(device, torch_dtype), x.to(device), y.to(device))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
