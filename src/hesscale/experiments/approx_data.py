"""Data for the approximation-quality study: a stream of single labelled examples.

``digits`` (scikit-learn's 8x8 digits, shipped with scikit-learn) works offline anywhere;
``mnist`` reads torchvision's MNIST from a local directory and downloads only when asked.
Inputs are flattened and scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

DATASETS = ("digits", "mnist")


def load_dataset(name: str, data_dir: str | Path = "data", download: bool = False):
    """(inputs (n, features) float32 in [0, 1], labels (n,) int64, number of classes)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0
        return x, torch.as_tensor(digits.target, dtype=torch.int64), 10
    if name == "mnist":
        from torchvision.datasets import MNIST

        try:
            mnist = MNIST(root=str(data_dir), train=True, download=download)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"MNIST was not found under {str(data_dir)!r} (torchvision layout: "
                f"{Path(data_dir) / 'MNIST' / 'raw'}). Point --data-dir at a directory that "
                "holds it, pass --download to fetch it, or use --data digits (built in)."
            ) from error
        x = mnist.data.reshape(len(mnist.data), -1).to(torch.float32) / 255.0
        return x, mnist.targets.to(torch.int64), 10
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def example_stream(
    inputs: Tensor, labels: Tensor, steps: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """``steps`` single examples (batch size 1), drawn without replacement in a random order
    and reshuffled after each pass through the data."""
    order = torch.empty(0, dtype=torch.int64)
    for step in range(steps):
        position = step % len(inputs)
        if position == 0:
            order = torch.randperm(len(inputs), generator=generator)
        i = order[position : position + 1]
        yield inputs[i], labels[i]
