"""Tasks: endless streams of classification mini-batches, stationary or non-stationary.

A built-in task is a dataset (scikit-learn's digits, built in, or MNIST / EMNIST / CIFAR-10 /
CIFAR-100 from a local data directory through torchvision) and a kind of stream:

- ``<dataset>``: stationary; mini-batches drawn without replacement, reshuffled every epoch.
- ``<dataset>-input-permuted``: a new random permutation of the input features (pixels and
  channels, flattened) every ``change_freq`` steps.
- ``<dataset>-label-permuted``: a new random permutation of the class labels every
  ``change_freq`` steps.

Inputs are scaled by the task option ``normalize``: ``unit`` (pixels in [0, 1]),
``symmetric`` ([-1, 1], (x - 0.5) / 0.5, the original HesScale study's MNIST and EMNIST) or
``standardize`` (per channel, with the training split's mean and standard deviation). Defaults:
digits ``unit``, MNIST and EMNIST ``symmetric``, CIFAR ``standardize``.

Performance is measured online: each batch is scored before the learner updates on it.
``test_batches`` gives the held-out test split (not for digits) for periodic evaluation.

Your own task: a ``TaskFactory`` (below), named by import path or registered with
``hesscale.experiments.register_task``. ``Stream.from_tensors`` turns tensors of your own into
such a stream (stationary or permuted, with exact checkpoints).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from hesscale.errors import ComponentError
from hesscale.experiments.components import Registry, describe_object, signature_accepts

DATA_DIR_ENV = "HESSCALE_DATA_DIR"
DEFAULT_DATA_DIR = "data"
KINDS = ("stationary", "input-permuted", "label-permuted")
DEFAULT_CHANGE_FREQ = {"input-permuted": 5000, "label-permuted": 2500}
NORMALIZATIONS = ("unit", "symmetric", "standardize")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not in the local data directory (and was not to be downloaded)."""


# the contract of a task ---------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSettings:
    """What a task factory receives: the run's settings that concern its data."""

    name: str  # the task as named in the run (for a family such as "rl:*", the full name)
    batch_size: int = 32  # examples per step
    seed: int = 0  # seed the stream's own torch.Generator with this (see SupervisedTask)
    change_freq: int | None = None  # steps between changes of a non-stationary stream, if set
    data_dir: str = DEFAULT_DATA_DIR  # where datasets live (--data-dir, $HESSCALE_DATA_DIR)
    download: bool = False  # whether a missing dataset may be downloaded


@runtime_checkable
class SupervisedTask(Protocol):
    """What a task factory returns: an endless stream of classification mini-batches.

    Required:
        input_shape: the shape of one example, e.g. ``(1, 28, 28)`` or ``(64,)``.
        n_outputs: the number of classes.
        next_batch(): ``(inputs, targets)``, float inputs of shape (B, *input_shape) and int64
            class indices of shape (B,). Draw its randomness from a ``torch.Generator`` seeded
            with ``settings.seed`` (not torch's global one, which initialises the network).

    Optional:
        test_batches(): the held-out test split as ``(inputs, targets)`` batches (for
            ``--eval-every``).
        state_dict() / load_state_dict(state): where the stream is (tensors, numbers, lists,
            dicts), so that a preempted run continues exactly. Without them a continued run
            replays the stream from its seed up to where it stopped.
        describe(): a dict of facts for the run's log.
        make_stepper(model, learner, device): for a task that is not supervised learning (e.g.
            reinforcement learning), the trainer's stepper for it (see trainer.Stepper);
            ``next_batch`` is then not needed.

    The loss is cross-entropy; accuracy is the fraction of argmax hits.
    """

    input_shape: tuple[int, ...]
    n_outputs: int

    def next_batch(self) -> tuple[Tensor, Tensor]: ...


class TaskFactory(Protocol):
    """Builds a run's task: ``factory(settings, **options)``; the options come from
    ``--task-opt KEY=VALUE`` or a spec's ``task_options`` table. A function, or a class
    whose constructor takes these arguments. A factory may carry ``check_options(options)``,
    which raises ValueError for option values it cannot use, before anything runs."""

    def __call__(self, settings: TaskSettings, /, **options: Any) -> SupervisedTask: ...


def check_task_factory(obj: Any, what: str) -> TaskFactory:
    """``obj`` if it can be called as ``factory(settings, **options)``; else ComponentError."""
    expected = (
        "a task factory: a function or class called as factory(settings: TaskSettings, "
        "**options) that returns a task with input_shape, n_outputs and next_batch() "
        "(see hesscale.experiments.tasks.SupervisedTask)"
    )
    if not callable(obj) or (not isinstance(obj, type) and hasattr(obj, "next_batch")):
        raise ComponentError(f"{what} is {describe_object(obj)}; expected {expected}.")
    problem = signature_accepts(obj, [TaskSettings("check")], {})
    if problem:
        raise ComponentError(f"{what} cannot be called as factory(settings): {problem}.")
    return obj


def check_task(task: Any, what: str) -> SupervisedTask:
    """``task`` if it is a task (or brings its own stepper); else ComponentError."""
    shape = getattr(task, "input_shape", None)
    n_outputs = getattr(task, "n_outputs", None)
    steps = callable(getattr(task, "next_batch", None)) or hasattr(task, "make_stepper")
    if (
        not steps
        or not isinstance(shape, tuple | list | torch.Size)
        or not all(isinstance(n, int) and n >= 1 for n in shape)
        or isinstance(n_outputs, bool)
        or not isinstance(n_outputs, int)
        or n_outputs < 1
    ):
        raise ComponentError(
            f"{what} returned {describe_object(task)}; expected a task: an object with "
            "input_shape (a tuple of sizes), n_outputs (an int >= 1) and next_batch() "
            "(see hesscale.experiments.tasks.SupervisedTask)."
        )
    return task


# datasets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """Raw samples (uint8 or small integers, or floats) and the affine map to network inputs:
    x = (raw * scale - mean) / std, mean and std per channel (dimension 1)."""

    name: str
    raw: Tensor  # (N, *example shape), stored compactly; converted per batch
    targets: Tensor  # (N,), int64
    n_classes: int
    mean: Tensor  # (C,) or (1,), subtracted after scaling
    std: Tensor  # (C,) or (1,)
    scale: float  # raw -> [0, 1] for images

    @classmethod
    def from_tensors(
        cls, name: str, inputs: Tensor, targets: Tensor, n_classes: int | None = None
    ) -> Dataset:
        """A dataset of your own: inputs (N, ...) used as they are, class indices (N,)."""
        inputs, targets = torch.as_tensor(inputs), torch.as_tensor(targets)
        if targets.dim() != 1 or len(targets) != len(inputs) or len(targets) == 0:
            raise ValueError(
                f"{name}: need inputs (N, ...) and targets (N,) with N >= 1, got shapes "
                f"{tuple(inputs.shape)} and {tuple(targets.shape)}."
            )
        if targets.is_floating_point() or targets.is_complex() or int(targets.min()) < 0:
            raise ValueError(f"{name}: targets must be class indices 0, 1, 2, ...")
        targets = targets.to(torch.int64)
        n_classes = int(targets.max()) + 1 if n_classes is None else n_classes
        if int(targets.max()) >= n_classes:
            raise ValueError(f"{name}: a target >= n_classes={n_classes}.")
        one, zero = torch.ones(1), torch.zeros(1)
        return cls(name, inputs, targets, n_classes, zero, one, 1.0)

    def inputs(self, index: Tensor) -> Tensor:
        x = self.raw[index].to(torch.float32) * self.scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def normalized(self, mode: str, like: Dataset | None = None) -> Dataset:
        """This dataset with inputs scaled by ``mode`` (see the module docstring); for
        'standardize', with the statistics of ``like`` (the training split) if given."""
        if mode == "unit":
            return replace(self, mean=torch.zeros(1), std=torch.ones(1))
        if mode == "symmetric":
            return replace(self, mean=torch.full((1,), 0.5), std=torch.full((1,), 0.5))
        if mode == "standardize":
            if like is not None:
                return replace(self, mean=like.mean, std=like.std)
            mean, std = _channel_statistics(self.raw, self.scale)
            return replace(self, mean=mean, std=std)
        raise ValueError(f"normalize={mode!r}: use one of {', '.join(NORMALIZATIONS)}.")


def _channel_statistics(raw: Tensor, scale: float, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel (dimension 1) mean and standard deviation of raw * scale, in chunks."""
    channels = raw.shape[1] if raw.dim() > 1 else 1
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(raw), chunk):
        x = raw[start : start + chunk].to(torch.float64) * scale
        x = x.reshape(len(x), channels, -1).transpose(0, 1).reshape(channels, -1)
        total += x.sum(1)
        squares += (x * x).sum(1)
    n = raw.numel() / channels
    mean = total / n
    std = ((squares - n * mean**2) / (n - 1)).clamp_min(0).sqrt()
    return mean.to(torch.float32), std.to(torch.float32)


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
    created = _missing_folders(root / _TORCHVISION_FOLDERS[cls_name] / "raw")
    printed = io.StringIO()  # torchvision prints each mirror it tried
    try:
        with contextlib.redirect_stdout(printed) if download else contextlib.nullcontext():
            return cls(root=str(root), train=train, download=download, **kwargs)
    except (RuntimeError, OSError) as error:
        for folder in created:  # leave no empty folders behind a failed download
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if download and (isinstance(error, OSError) or "download" in str(error).lower()):
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            lines += [line.strip() for line in printed.getvalue().splitlines() if line.strip()]
            first = lines[0].rstrip(":") if lines else type(error).__name__
            reason = next((line for line in lines[1:] if line.startswith("<")), "")
            raise DatasetNotFoundError(
                f"{cls_name} could not be downloaded into '{root.resolve()}' "
                f"({first}{': ' + reason if reason else ''}). "
                "Download it on a machine with network access and copy it there, or point "
                f"--data-dir (or ${DATA_DIR_ENV}) at a folder that holds it."
            ) from None
        if isinstance(error, OSError) or download or "not found" not in str(error).lower():
            raise
        where = root.resolve() / _TORCHVISION_FOLDERS[cls_name]
        raise DatasetNotFoundError(
            f"{cls_name} {'training' if train else 'test'} data was not found: torchvision "
            f"looks in '{where}'. Put the "
            f"dataset files there, point --data-dir (or ${DATA_DIR_ENV}) at the folder that "
            "holds them, or pass --download to fetch them from the internet once."
        ) from None


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


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
        targets = torch.as_tensor(ds.targets, dtype=torch.int64)
        return Dataset(
            cls_name.lower(), raw, targets, n_classes, torch.zeros(1), torch.ones(1), 1 / 255
        )

    return load


DATASETS = {
    "digits": _digits,
    "mnist": _mnist_like("MNIST", 10, transpose=False),
    "emnist": _mnist_like("EMNIST", 47, transpose=True, split="balanced"),
    "cifar10": _cifar("CIFAR10", 10),
    "cifar100": _cifar("CIFAR100", 100),
}
DEFAULT_NORMALIZE = {
    "digits": "unit",
    "mnist": "symmetric",
    "emnist": "symmetric",
    "cifar10": "standardize",
    "cifar100": "standardize",
}


@functools.lru_cache(maxsize=4)
def load_dataset(
    name: str, data_dir: str | None = None, download: bool = False, train: bool = True
) -> Dataset:
    """The training (or test) split of dataset ``name``, inputs in [0, 1] (cached per
    process); ``Dataset.normalized`` scales them otherwise."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset '{name}'. Known: {', '.join(DATASETS)}.")
    return DATASETS[name](data_dir or default_data_dir(), download, train)


@functools.lru_cache(maxsize=4)
def _normalized_training(name: str, data_dir: str | None, download: bool, mode: str) -> Dataset:
    return load_dataset(name, data_dir, download).normalized(mode)


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


# streams --------------------------------------------------------------------------------------


class Stream:
    """An endless stream of ``(inputs, targets)`` mini-batches of ``dataset``, of one of the
    kinds of the module docstring, drawn with its own generator seeded by ``seed``.

    ``test``: the held-out split, a Dataset or a function that loads it (None: there is none).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        kind: str = "stationary",
        batch_size: int = 32,
        seed: int = 0,
        change_freq: int | None = None,
        name: str | None = None,
        test: Dataset | Callable[[], Dataset] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: use one of {', '.join(KINDS)}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if change_freq is None:
            change_freq = DEFAULT_CHANGE_FREQ.get(kind)
        self.name = name or dataset.name
        if kind != "stationary" and (change_freq is None or change_freq < 1):
            raise ValueError(f"Task '{self.name}' needs change_freq >= 1, got {change_freq}.")
        self.kind, self.dataset, self._test = kind, dataset, test
        self.batch_size = batch_size
        self.change_freq = change_freq if kind != "stationary" else None
        self.input_shape: tuple[int, ...] = tuple(dataset.raw.shape[1:])
        self.n_outputs = dataset.n_classes
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.int64)
        self._position = 0
        self._step = 0
        self._permutation: Tensor | None = None

    @classmethod
    def from_tensors(
        cls,
        inputs: Tensor,
        targets: Tensor,
        settings: TaskSettings,
        *,
        kind: str = "stationary",
        n_classes: int | None = None,
        test: tuple[Tensor, Tensor] | None = None,
    ) -> Stream:
        """A stream of your own examples (inputs used as they are, targets class indices),
        with the batch size, seed and change frequency of ``settings``; ``test``: held-out
        (inputs, targets) for ``--eval-every``."""
        dataset = Dataset.from_tensors(settings.name, inputs, targets, n_classes)
        held_out = None
        if test is not None:
            held_out = Dataset.from_tensors(settings.name, *test, dataset.n_classes)
        return cls(
            dataset,
            kind=kind,
            batch_size=settings.batch_size,
            seed=settings.seed,
            change_freq=settings.change_freq,
            name=settings.name,
            test=held_out,
        )

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
        """The held-out test split (a ValueError if there is none)."""
        if self._test is None:
            raise ValueError(
                f"Task '{self.name}' has no held-out test split (leave out --eval-every)."
            )
        if callable(self._test):
            self._test = self._test()
        return self._test

    def test_batches(self, batch_size: int = 1000) -> Iterator[tuple[Tensor, Tensor]]:
        """The whole test split in batches, under the stream's current permutation."""
        test = self.test_split()
        for start in range(0, len(test.targets), batch_size):
            index = torch.arange(start, min(start + batch_size, len(test.targets)))
            yield self._transform(test.inputs(index), test.targets[index])


class Task(Stream):
    """A built-in task by name (see the module docstring)."""

    def __init__(
        self,
        name: str,
        batch_size: int = 32,
        seed: int = 0,
        change_freq: int | None = None,
        data_dir: str | None = None,
        download: bool = False,
        normalize: str | None = None,
    ) -> None:
        dataset_name, kind = parse_task_name(name)
        mode = normalize or DEFAULT_NORMALIZE[dataset_name]
        if mode not in NORMALIZATIONS:
            raise ValueError(f"normalize={mode!r}: use one of {', '.join(NORMALIZATIONS)}.")
        training = _normalized_training(dataset_name, data_dir, download, mode)

        def test() -> Dataset:
            held_out = load_dataset(dataset_name, data_dir, download, train=False)
            return held_out.normalized(mode, like=training)

        super().__init__(
            training,
            kind=kind,
            batch_size=batch_size,
            seed=seed,
            change_freq=change_freq,
            name=name,
            test=test,
        )
        self.normalize = mode

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "normalize": self.normalize}


# the registry ---------------------------------------------------------------------------------

TASKS: Registry[TaskFactory] = Registry("task", check_task_factory)


def _builtin_task(name: str) -> TaskFactory:
    def build(settings: TaskSettings, *, normalize: str | None = None) -> Task:
        return Task(
            name,
            batch_size=settings.batch_size,
            seed=settings.seed,
            change_freq=settings.change_freq,
            data_dir=settings.data_dir,
            download=settings.download,
            normalize=normalize,
        )

    build.__doc__ = f"The built-in task {name}; normalize: one of {', '.join(NORMALIZATIONS)}."
    return build


for _name in task_names():
    TASKS.register(_name, _builtin_task(_name), builtin=True)


def check_task_options(factory: TaskFactory, what: str, options: dict[str, Any]) -> None:
    """ComponentError if ``factory`` does not take ``options``; bad values of a built-in
    option are ValueErrors too."""
    problem = signature_accepts(factory, [TaskSettings("check")], options)
    if problem:
        raise ComponentError(f"{what} does not take the options {sorted(options)}: {problem}.")
    check_values = getattr(factory, "check_options", None)  # a factory's own early checks
    if callable(check_values):
        check_values(options)
    mode = options.get("normalize")
    builtin = getattr(factory, "__module__", None) == __name__
    if builtin and mode is not None and mode not in NORMALIZATIONS:
        raise ValueError(f"{what}: normalize={mode!r}; use one of {', '.join(NORMALIZATIONS)}.")
