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


def resnet18(width: int = 64, depth: int = 18, activation: str = "relu") -> nn.Module:
    """torchvision's ResNet-18 as it is (in-place ReLU, BatchNorm in train mode, max-pool
    stem), 10 classes; on 3x32x32 inputs. ``width`` and ``depth`` are fixed (64, 18)."""
    from torchvision.models import resnet18 as torchvision_resnet18

    _fixed("resnet18", width=(width, 64), depth=(depth, 18), activation=(activation, "relu"))
    return torchvision_resnet18(num_classes=N_CLASSES)


GPT_VOCAB, GPT_LENGTH = 512, 64


def gpt(width: int = 128, depth: int = 2, activation: str = "gelu") -> nn.Module:
    """A GPT with ``depth`` blocks of ``width`` (4 heads), vocabulary 512, 64 tokens."""
    from hesscale.experiments.transformer import GPT

    _fixed("gpt", activation=(activation, "gelu"))
    return GPT(GPT_VOCAB, GPT_LENGTH, width, depth, heads=4)


def _fixed(model: str, **settings: tuple) -> None:
    for name, (given, fixed) in settings.items():
        if given != fixed:
            raise ValueError(f"--model {model} has {name} {fixed} (got {given})")


def _classes(batch: int, input_shape: tuple[int, ...], generator, dtype) -> tuple[Tensor, Tensor]:
    x = torch.randn(batch, *input_shape, generator=generator, dtype=dtype)
    return x, torch.randint(0, N_CLASSES, (batch,), generator=generator)


def _tokens(batch: int, input_shape: tuple[int, ...], generator, dtype) -> tuple[Tensor, Tensor]:
    x = torch.randint(0, GPT_VOCAB, (batch, *input_shape), generator=generator)
    return x, torch.randint(0, GPT_VOCAB, (batch, *input_shape), generator=generator)


@dataclass(frozen=True)
class ModelSpec:
    constructor: Callable[..., nn.Module]
    input_shape: tuple[int, ...]  # without the batch
    activation: str  # the default
    make_batch: Callable[..., tuple[Tensor, Tensor]] = _classes
    loss: Callable[[], nn.Module] = nn.CrossEntropyLoss


def _sequence_loss() -> nn.Module:
    from hesscale.experiments.transformer import SequenceCrossEntropy

    return SequenceCrossEntropy()


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(mlp, (784,), "tanh"),
    "cnn": ModelSpec(cnn, (3, 32, 32), "relu"),
    "resnet18": ModelSpec(resnet18, (3, 32, 32), "relu"),
    "gpt": ModelSpec(gpt, (GPT_LENGTH,), "gelu", _tokens, _sequence_loss),
}
ACTIVATIONS = tuple(networks.ACTIVATIONS)


@dataclass
class Problem:
    """One configuration: the initial model, a loss and a mini-batch (all on one device)."""

    model: nn.Module
    x: Tensor
    y: Tensor
    loss: Callable[[], nn.Module] = nn.CrossEntropyLoss

    def copy(self, extended: bool) -> tuple[nn.Module, nn.Module]:
        model, loss_fn = copy.deepcopy(self.model), self.loss()
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
    spec = MODELS[model]
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(seed)
    with _seeded(seed):
        net = spec.constructor(width, depth, activation or spec.activation)
    x, y = spec.make_batch(batch, spec.input_shape, generator, torch_dtype)
    return Problem(net.to(device, torch_dtype), x.to(device), y.to(device), spec.loss)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
