"""Tasks: endless streams of classification mini-batches, stationary or non-stationary.

A task is a dataset (built-in scikit-learn digits, or MNIST / EMNIST / CIFAR-10 / CIFAR-100 from
a local data directory through torchvision) and a kind of stream:

- ``<dataset>``: stationary; mini-batches drawn without replacement, reshuffled every epoch.
- ``<dataset>-input-permuted``: a new random permutation of the input features (pixels and
  channels, flattened) every ``change_freq`` steps.
- ``<dataset>-label-permuted``: a new random permutation of the class labels every
  ``change_freq`` steps.

Performance is measured online: each batch is scored before the learner updates on it.
``Task.test_batches`` gives the held-out test split (not for digits) for periodic evaluation.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

DATA_DIR_ENV = "HESSCALE_DATA_DIR"
DEFAULT_DATA_DIR = "data"
KINDS = ("stationary", "input-permuted", "label-permuted")
DEFAULT_CHANGE_FREQ = {"input-permuted": 5000, "label-permuted": 2500}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not in the local data directory (and was not to be downloaded)."""


@dataclass(frozen=True)
class Dataset:
    """Raw samples (uint8 or small integers) and the affine map to network inputs."""

    name: str
    raw: Tensor  # (N, C, H, W), stored compactly; converted per batch
    targets: Tensor  # (N,), int64
    n_classes: int
    mean: Tensor  # (C,) subtracted after scaling
    std: Tensor  # (C,)
    scale: float  # raw -> [0, 1]

    def inputs(self, index: Tensor) -> Tensor:
        x = self.raw[index].to(torch.float32) * self.scale
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)


def default_data_dir() -> str:
    return os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR)


def _digits_array():
    """scikit-learn's 8x8 digits as (1797, 65): 64 pixels (0..16), then the label."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is not None and path.is_file():  # the file load_digits reads, without importing
        return np.loadtxt(path, delimiter=",")  # scikit-learn (which takes seconds)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.concatenate([bunch.data, bunch.target[:, None]], axis=1)


def _digits(data_dir: str, download: bool, train: bool) -> Dataset:
    if not train:
        raise ValueError(
            "digits has no held-out test split: its tasks measure online performance only "
            "(leave out --eval-every / eval_every)."
        )
    array = _digits_array()
    raw = torch.as_tensor(array[:, :64], dtype=torch.uint8).view(-1, 1, 8, 8)  # values 0..16
    targets = torch.as_tensor(array[:, 64], dtype=torch.int64)
    return Dataset("digits", raw, targets, 10, torch.zeros(1), torch.ones(1), 1.0 / 16.0)


_TORCHVISION_FOLDERS = {
    "MNIST": "MNIST/raw",
    "EMNIST": "EMNIST/raw",
    "CIFAR10": "cifar-10-batches-py",
    "CIFAR100": "cifar-100-python",
}


def _torchvision(cls_name: str, data_dir: str, download: bool, train: bool, **kwargs: Any) -> Any:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, cls_name)
    root = Path(data_dir).expanduser()
    try:
        return cls(root=str(root), train=train, download=download, **kwargs)
    except RuntimeError as error:
        if download or "not found" not in str(error).lower():
            raise
        where = root.resolve() / _TORCHVISION_FOLDERS[cls_name]
        raise DatasetNotFoundError(
            f"{cls_name} {'training' if train else 'test'} data was not found: torchvision "
            f"looks in '{where}'. Put the "
            f"dataset files there, point --data-dir (or ${DATA_DIR_ENV}) at the folder that "
            "holds them, or pass --download to fetch them from the internet once."
        ) from None
    except OSError as error:  # download attempted without network
        raise DatasetNotFoundError(
            f"{cls_name} could not be downloaded into '{root.resolve()}': {error}. Download it "
            "on a machine with network access and copy it there."
        ) from error


def _mnist_like(cls_name: str, n_classes: int, transpose: bool, **kwargs: Any):
    def load(data_dir: str, download: bool, train: bool) -> Dataset:
        ds = _torchvision(cls_name, data_dir, download, train, **kwargs)
        raw = torch.as_tensor(ds.data)
        if transpose:  # EMNIST images are stored transposed
            raw = raw.transpose(1, 2)
        raw = raw.contiguous().unsqueeze(1)
        targets = torch.as_tensor(ds.targets, dtype=torch.int64)
        return Dataset(
            cls_name.lower(), raw, targets, n_classes, torch.zeros(1), torch.ones(1), 1 / 255
        )

    return load


def _cifar(cls_name: str, n_classes: int):
    def load(data_dir: str, download: bool, train: bool) -> Dataset:
        ds = _torchvision(cls_name, data_dir, download, train)
        raw = torch.as_tensor(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        if train:
            x = raw.to(torch.float32) / 255
            mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
        else:  # the test set is standardised with the training set's statistics
            training = load_dataset(cls_name.lower(), data_dir, download)
            mean, std = training.mean, training.std
        targets = torch.as_tensor(ds.targets, dtype=torch.int64)
        return Dataset(cls_name.lower(), raw, targets, n_classes, mean, std, 1 / 255)

    return load


DATASETS = {
    "digits": _digits,
    "mnist": _mnist_like("MNIST", 10, transpose=False),
    "emnist": _mnist_like("EMNIST", 47, transpose=True, split="balanced"),
    "cifar10": _cifar("CIFAR10", 10),
    "cifar100": _cifar("CIFAR100", 100),
}


@functools.lru_cache(maxsize=4)
def load_dataset(
    name: str, data_dir: str | None = None, download: bool = False, train: bool = True
) -> Dataset:
    """The training (or test) split of dataset ``name`` (cached per process)."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset '{name}'. Known: {', '.join(DATASETS)}.")
    return DATASETS[name](data_dir or default_data_dir(), download, train)


def task_names() -> list[str]:
    names = []
    for dataset in DATASETS:
        names += [dataset, f"{dataset}-input-permuted", f"{dataset}-label-permuted"]
    return names


def parse_task_name(name: str) -> tuple[str, str]:
    """``'mnist-input-permuted'`` -> ``('mnist', 'input-permuted')``."""
    for kind in KINDS[1:]:
        if name.endswith("-" + kind) and name[: -len(kind) - 1] in DATASETS:
            return name[: -len(kind) - 1], kind
    if name in DATASETS:
        return name, "stationary"
    raise ValueError(f"Unknown task '{name}'. Known tasks: {', '.join(task_names())}.")


class Task:
    """An endless stream of ``(inputs, targets)`` mini-batches; see the module docstring."""

    def __init__(
        self,
        name: str,
        batch_size: int = 32,
        seed: int = 0,
        change_freq: int | None = None,
        data_dir: str | None = None,
        download: bool = False,
    ) -> None:
        dataset_name, self.kind = parse_task_name(name)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if change_freq is None:
            change_freq = DEFAULT_CHANGE_FREQ.get(self.kind)
        if self.kind != "stationary" and (change_freq is None or change_freq < 1):
            raise ValueError(f"Task '{name}' needs change_freq >= 1, got {change_freq}.")
        self.name = name
        self.dataset = load_dataset(dataset_name, data_dir, download)
        self._test_source = (dataset_name, data_dir, download)
        self.batch_size = batch_size
        self.change_freq = change_freq if self.kind != "stationary" else None
        self.input_shape: tuple[int, ...] = tuple(self.dataset.raw.shape[1:])
        self.n_outputs = self.dataset.n_classes
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.int64)
        self._position = 0
        self._step = 0
        self._permutation: Tensor | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset.name,
            "kind": self.kind,
            "n_samples": len(self.dataset.targets),
            "input_shape": list(self.input_shape),
            "n_outputs": self.n_outputs,
            "batch_size": self.batch_size,
            "change_freq": self.change_freq,
        }

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: enough to continue it exactly (see ``load_state_dict``)."""
        return {
            "generator": self._generator.get_state(),
            "order": self._order,
            "position": self._position,
            "step": self._step,
            "permutation": self._permutation,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])
        self._order, self._position = state["order"], state["position"]
        self._step, self._permutation = state["step"], state["permutation"]

    def _indices(self) -> Tensor:
        chunks, needed = [], self.batch_size
        while needed > 0:
            if self._position >= len(self._order):
                n = len(self.dataset.targets)
                self._order = torch.randperm(n, generator=self._generator)
                self._position = 0
            chunk = self._order[self._position : self._position + needed]
            self._position += len(chunk)
            needed -= len(chunk)
            chunks.append(chunk)
        return torch.cat(chunks)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        if self.change_freq is not None and self._step % self.change_freq == 0:
            size = self.n_outputs if self.kind == "label-permuted" else math.prod(self.input_shape)
            self._permutation = torch.randperm(size, generator=self._generator)
        self._step += 1
        index = self._indices()
        return self._transform(self.dataset.inputs(index), self.dataset.targets[index])

    def _transform(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.kind == "input-permuted":
            x = x.flatten(1)[:, self._permutation].view_as(x)
        elif self.kind == "label-permuted":
            y = self._permutation[y]
        return x, y

    def test_split(self) -> Dataset:
        """The dataset's held-out test split (loaded once per process)."""
        return load_dataset(*self._test_source, train=False)

    def test_batches(self, batch_size: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        """The whole test split in batches, under the stream's current permutation."""
        test = self.test_split()
        for start in range(0, len(test.targets), batch_size):
            index = torch.arange(start, min(start + batch_size, len(test.targets)))
            yield self._transform(test.inputs(index), test.targets[index])
