"""Approximation quality: how close is each diagonal estimate to the exact Hessian diagonal?

The study of the HesScale paper (Elsayed & Mahmood 2022), as one command. An MLP (default:
three hidden layers of 32 tanh units) learns from a stream of single examples. At every step
each method estimates the Hessian diagonal of that example's loss; we record the L1 distance
to the exact diagonal (BackPACK's DiagHessian), per layer and in total; then the network takes
an SGD step, so curvature is measured along a learning trajectory. Repeated over seeds.

``--network residual`` (a residual MLP) and ``--network transformer`` (a small transformer
reading the image row by row) are not chains of modules: on them the methods are those that
work on any nn.Module (``any_model_estimators``: HesScale and HesScaleGN through
``hesscale.backward``, the exact diagonal from autograd's Hessian-vector products, one per
parameter entry); BackPACK's KFAC and BL89 are left out (said so in the output).

Reported: each method's mean total L1 error normalized by HesScale's (HesScale = 1; per-seed
ratios, then their mean and spread), and the mean L1 error of each layer.

Outputs under ``--out`` (default ``results/approx-quality/DATA-NETWORK-LOSS``):
``results.json`` (configuration, summary and the raw errors, indexed
[seed][step][method][layer]), ``errors.csv`` (the same raw errors, one row each),
``summary.csv``, ``normalised_error.png`` and ``error_by_layer.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from hesscale.estimators import (
    Estimator,
    any_model_estimators,
    exact_hessian,
    standard_estimators,
)
from hesscale.estimators.any_model import ExactHessianAutograd
from hesscale.experiments.networks import ACTIVATIONS as NETWORK_ACTIVATIONS
from hesscale.experiments.networks import ResidualMLP, fully_connected
from hesscale.experiments.tasks import DATASETS, Task
from hesscale.experiments.transformer import RowTransformer
from hesscale.hook_warning import hook_warning_hidden

ACTIVATIONS = tuple(NETWORK_ACTIVATIONS)
LOSSES = ("ce", "mse")
NORMALIZER = "HesScale"
HESSCALE_VARIANTS = ("HesScale", "HesScaleGN")
TIE = 1e-9  # relative difference below which two errors count as equal (e.g. BL89 with MSE)
NETWORKS = ("mlp", "residual", "transformer")
NETWORK_DEFAULTS = {  # width, depth (hidden layers / residual blocks / transformer blocks), act.
    "mlp": {"width": 32, "depth": 3, "activation": "tanh"},
    "residual": {"width": 32, "depth": 2, "activation": "tanh"},
    "transformer": {"width": 16, "depth": 1, "activation": "gelu"},
}
TRANSFORMER_HEADS = 2


@dataclass(frozen=True)
class StudyConfig:
    data: str = "digits"
    data_dir: str | None = None  # None: hesscale.experiments.tasks.default_data_dir()
    download: bool = False
    seeds: int = 5
    steps: int = 200
    network: str = "mlp"
    width: int | None = None  # None: the network's default (NETWORK_DEFAULTS)
    depth: int | None = None
    activation: str | None = None
    loss: str = "ce"
    lr: float = 0.004
    samples: int = 10
    dtype: str = "float64"
    methods: tuple[str, ...] | None = None  # None: all of standard_estimators(samples)

    def __post_init__(self) -> None:
        for name, value in NETWORK_DEFAULTS.get(self.network, {}).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def validate(self) -> None:
        if self.network not in NETWORKS:
            raise ValueError(
                f"--network {self.network!r} is not supported; choose one of {', '.join(NETWORKS)}"
            )
        for name in ("seeds", "steps", "width", "depth", "samples"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}")
        if self.lr < 0 or not math.isfinite(self.lr):
            raise ValueError(f"--lr must be a finite non-negative number, got {self.lr}")
        if self.network == "transformer":
            if self.activation != "gelu":
                raise ValueError(
                    f"--activation {self.activation!r}: the transformer's MLP uses GELU; "
                    "--activation applies to the mlp and residual networks"
                )
            if self.width % TRANSFORMER_HEADS:
                raise ValueError(
                    f"--width {self.width}: the transformer's width must be divisible by its "
                    f"{TRANSFORMER_HEADS} attention heads"
                )
        choices = {
            "data": tuple(DATASETS),
            "activation": ("gelu",) if self.network == "transformer" else tuple(ACTIVATIONS),
            "loss": LOSSES,
            "dtype": ("float32", "float64"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"--{name} {getattr(self, name)!r} is not supported; "
                    f"choose one of {', '.join(allowed)}"
                )


def _method_pool(config: StudyConfig) -> list[Estimator]:
    """The methods that work on ``config.network`` (the exact reference excluded): on the MLP
    (a chain of modules) every method, BackPACK's included; on the others those for any
    nn.Module."""
    make = standard_estimators if config.network == "mlp" else any_model_estimators
    return [m for m in make(config.samples) if m.name != "Exact"]


def select_methods(config: StudyConfig) -> list[Estimator]:
    """The compared methods (the exact reference itself excluded), without those that do not
    work on the network (see ``left_out_methods``)."""
    methods = _method_pool(config)
    if config.methods is None:
        return methods
    everywhere = [m.name for m in standard_estimators(config.samples) if m.name != "Exact"]
    known = list(dict.fromkeys([*everywhere, *(m.name for m in methods)]))
    unknown = [name for name in config.methods if name not in known]
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown)}; available with --samples "
            f"{config.samples}: {', '.join(known)}"
        )
    if NORMALIZER not in config.methods:
        raise ValueError(f"--methods must include {NORMALIZER}: errors are normalized by it")
    by_name = {m.name: m for m in methods}
    return [by_name[name] for name in dict.fromkeys(config.methods) if name in by_name]


def left_out_methods(config: StudyConfig) -> list[str]:
    """The asked-for methods (all by default) that need BackPACK and a chain of modules, so
    cannot run on ``config.network``."""
    available = {m.name for m in _method_pool(config)}
    asked = config.methods or [
        m.name for m in standard_estimators(config.samples) if m.name != "Exact"
    ]
    return [name for name in dict.fromkeys(asked) if name not in available]


def reference_estimator(config: StudyConfig) -> Estimator:
    """The exact Hessian diagonal: BackPACK's DiagHessian on the MLP, autograd's
    Hessian-vector products (one per parameter entry) on the other networks."""
    return exact_hessian() if config.network == "mlp" else ExactHessianAutograd()


def reference_description(config: StudyConfig) -> str:
    if config.network == "mlp":
        return "exact Hessian diagonal (BackPACK DiagHessian)"
    return "exact Hessian diagonal (autograd: one Hessian-vector product per parameter entry)"


def build_model(config: StudyConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The study's network for inputs of ``input_shape`` (C, H, W), in ``config.dtype``."""
    if config.network == "mlp":
        model = fully_connected(
            (math.prod(input_shape),),
            n_classes,
            [config.width] * config.depth,
            config.activation,
        )
    elif config.network == "residual":
        model = ResidualMLP(input_shape, n_classes, config.width, config.depth, config.activation)
    else:
        model = RowTransformer(
            input_shape, n_classes, config.width, config.depth, heads=TRANSFORMER_HEADS
        )
    return model.to(getattr(torch, config.dtype))


def layer_index(model: nn.Module) -> tuple[list[str], list[int]]:
    """Names of the parametrised layers, and for each trainable parameter its layer's index."""
    names, owner = [], {}
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own:
            for p in own:
                owner[id(p)] = len(names)
            names.append(f"layer {len(names) + 1}")
    return names, [owner[id(p)] for p in model.parameters() if p.requires_grad]


def layer_modules(model: nn.Module) -> list[str]:
    """The module (its name in ``model``) of each layer of ``layer_index``, in its order."""
    return [
        name
        for name, module in model.named_modules()
        if any(p.requires_grad for p in module.parameters(recurse=False))
    ]


def l1_by_layer(
    estimate: list[Tensor], exact: list[Tensor], owners: list[int], n_layers: int
) -> np.ndarray:
    errors = np.zeros(n_layers)
    for est, ref, layer in zip(estimate, exact, owners, strict=True):
        errors[layer] += float((est - ref).abs().sum())
    return errors


def example_stream(config: StudyConfig, seed: int) -> Task:
    """Single examples (batch size 1) of the stationary task ``config.data``, in a random
    order that depends on ``seed``, reshuffled after each pass through the data."""
    return Task(
        config.data,
        batch_size=1,
        seed=10_000 + seed,
        data_dir=config.data_dir,
        download=config.download,
    )


def run_seed(
    seed: int, config: StudyConfig, methods: list[Estimator], progress: tqdm | None = None
) -> np.ndarray:
    """Errors of one seed's trajectory, shape (steps, methods, layers)."""
    stream = example_stream(config, seed)
    n_classes = stream.n_outputs
    dtype = getattr(torch, config.dtype)
    torch.manual_seed(seed)  # initialisation and the stochastic estimators
    model = build_model(config, stream.input_shape, n_classes)
    loss_fn = nn.CrossEntropyLoss() if config.loss == "ce" else nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    reference = reference_estimator(config)
    layer_names, owners = layer_index(model)
    errors = np.zeros((config.steps, len(methods), len(layer_names)))
    for step in range(config.steps):
        x, label = stream.next_batch()
        x = x.flatten(1).to(dtype)
        y = label if config.loss == "ce" else nn.functional.one_hot(label, n_classes).to(dtype)
        exact = reference.estimate(model, loss_fn, x, y)
        for j, method in enumerate(methods):
            estimate = method.estimate(model, loss_fn, x, y)
            errors[step, j] = l1_by_layer(estimate, exact, owners, len(layer_names))
        optimizer.zero_grad()
        with hook_warning_hidden():  # the BackPACK estimators extended the model
            loss_fn(model(x), y).backward()
        optimizer.step()
        if progress is not None:
            progress.update()
    return errors


def summarize(errors: np.ndarray, methods: list[Estimator], layer_names: list[str]) -> list[dict]:
    """Per method: mean total L1, its ratio to HesScale's per seed, and per-layer mean L1."""
    names = [m.name for m in methods]
    total = errors.sum(-1).mean(1)  # (seeds, methods): mean over steps of the total L1
    normalized = total / total[:, [names.index(NORMALIZER)]]
    rows = []
    for j, method in enumerate(methods):
        ratios = normalized[:, j]
        rows.append(
            {
                "method": method.name,
                "one_backprop": method.one_backprop,
                "l1_total": float(total[:, j].mean()),
                "normalised_mean": float(ratios.mean()),
                "normalised_std": float(ratios.std(ddof=1)) if len(ratios) > 1 else 0.0,
                "normalised_per_seed": ratios.tolist(),
                "l1_by_layer": dict(
                    zip(layer_names, errors[:, :, j].mean((0, 1)).tolist(), strict=True)
                ),
            }
        )
    return rows


def seed_outcomes(row: dict) -> tuple[int, int, int]:
    """In how many seeds HesScale's error is below this method's, equal to it (within TIE),
    and above it."""
    ratios = np.asarray(row["normalised_per_seed"])
    wins = int((ratios > 1 + TIE).sum())
    ties = int((np.abs(ratios - 1) <= TIE).sum())
    return wins, ties, len(ratios) - wins - ties


def _rivals(rows: list[dict]) -> list[dict]:
    """The methods costing about one backprop, HesScale's own variants excluded."""
    return [r for r in rows if r["one_backprop"] and r["method"] not in HESSCALE_VARIANTS]


def verdict(rows: list[dict]) -> tuple[bool, list[str]]:
    """Whether HesScale's error is below that of every other method costing about one backprop
    (the paper's claim), in every seed; and one line per such method."""
    lines, beats_all = [], True
    for row in _rivals(rows):
        wins, ties, losses = seed_outcomes(row)
        n = wins + ties + losses
        beats_all &= wins == n
        tied = f", equal in {ties}" if ties else ""
        lost = f", worse in {losses}" if losses else ""
        lines.append(
            f"  {row['method']:<13} error / HesScale's = {np.mean(row['normalised_per_seed']):8.3g}"
            f"  (HesScale better in {wins}/{n} seeds{tied}{lost})"
        )
    return beats_all, lines


def verdict_summary(rows: list[dict]) -> str:
    """The answer in words: yes, or which methods tie with HesScale and which beat it."""
    ties, losses = [], []
    for row in _rivals(rows):
        _, tied, lost = seed_outcomes(row)
        if lost:
            losses.append(f"{row['method']} in {lost} seed{'s' * (lost > 1)}")
        elif tied:
            ties.append(f"{row['method']} in {tied} seed{'s' * (tied > 1)}")
    if not ties and not losses:
        return "yes"
    parts = []
    if losses:
        parts.append("it loses to " + ", ".join(losses))
    if ties:
        parts.append("it ties with " + ", ".join(ties) + " (an equal error, not a worse one)")
    return "no: " + "; ".join(parts)


def describe_network(config: StudyConfig) -> str:
    """The network in a few words, e.g. 'MLP 3x32 tanh'."""
    if config.network == "mlp":
        return f"MLP {config.depth}x{config.width} {config.activation}"
    blocks = f"{config.depth} block{'s' * (config.depth != 1)}"
    if config.network == "residual":
        return f"residual MLP {config.width} wide, {blocks} x + {config.activation}(Wx + b)"
    return f"transformer {config.width} wide, {blocks}, {TRANSFORMER_HEADS} heads, GELU"


def describe_setting(config: StudyConfig) -> str:
    """The study's setting in one line, for titles."""
    loss = {"ce": "cross-entropy", "mse": "MSE"}[config.loss]
    return (
        f"{config.data}, {describe_network(config)}, {loss}, "
        f"{config.seeds} seeds x {config.steps} steps"
    )


def layer_labels(layer_names: list[str], modules: list[str] | None = None) -> list[str]:
    """The layer names (with their module's name, if given) with the last one marked as the
    output layer."""
    if modules is not None:
        layer_names = [f"{n}\n{m}" for n, m in zip(layer_names, modules, strict=True)]
    return [*layer_names[:-1], f"{layer_names[-1]} (output)"] if layer_names else []


def layer_legend(layer_names: list[str], modules: list[str]) -> str:
    """'layer 1 = embed, layer 2 = positions, ...' wrapped to lines of at most 100 characters."""
    lines, line = [], "layers:"
    for name, module in zip(layer_names, modules, strict=True):
        item = f" {name.split()[-1]} {module},"
        if len(line) + len(item) > 100:
            lines.append(line)
            line = "       "
        line += item
    return "\n".join([*lines, line.rstrip(",")])


def format_table(rows: list[dict], layer_names: list[str]) -> str:
    head = f"{'method':<14}{'1 bp':>5}{'L1 total':>11}{'norm. mean':>12}{'± std':>10}"
    numbers = [n.split()[-1] for n in layer_names]
    head += (
        "".join(f"{'L1 ' + n:>10}" for n in numbers[:-1]) + f"{'L1 ' + numbers[-1] + ' out':>12}"
    )
    lines = [head, "-" * len(head)]
    for row in sorted(rows, key=lambda r: r["normalised_mean"]):
        line = (
            f"{row['method']:<14}{'yes' if row['one_backprop'] else '':>5}"
            f"{row['l1_total']:>11.4g}{row['normalised_mean']:>12.4g}{row['normalised_std']:>10.3g}"
        )
        line += "".join(f"{row['l1_by_layer'][n]:>10.3g}" for n in layer_names[:-1])
        line += f"{row['l1_by_layer'][layer_names[-1]]:>12.3g}"
        lines.append(line)
    return "\n".join(lines)


EXACT = 1e-12  # an error below this fraction of the largest one is round-off: the method is exact


def plot(
    rows: list[dict],
    layer_names: list[str],
    out: Path,
    setting: str = "",
    modules: list[str] | None = None,
) -> list[Path]:
    """normalised_error.png (bars: mean; dots: seeds) and error_by_layer.png (heat map).

    Errors at round-off level (below EXACT x the largest) are shown as exact: on the bars'
    log axis at its floor, marked "exact", instead of vanishing; in the heat map as "exact"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    rows = sorted(rows, key=lambda r: r["normalised_mean"])
    names = [r["method"] for r in rows]
    positions = np.arange(len(rows))
    colors = ["tab:red" if n == NORMALIZER else "tab:blue" for n in names]
    values = np.array([v for r in rows for v in (r["normalised_mean"], *r["normalised_per_seed"])])
    largest = values.max() if values.size else 1.0
    positive = values[values > EXACT * largest]
    floor = positive.min() / 5 if positive.size else 1e-3  # where exact (zero) errors are drawn

    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2), 4.6))
    means = np.array([r["normalised_mean"] for r in rows])
    exact = means <= EXACT * largest
    ax.bar(positions[~exact], means[~exact], color=np.array(colors)[~exact], alpha=0.6)
    ax.bar(positions[exact], floor, color="none", edgecolor="tab:green", hatch="//")
    for i, row in enumerate(rows):
        seeds = np.maximum(np.asarray(row["normalised_per_seed"]), floor)
        jitter = np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else np.zeros(1)
        ax.scatter(i + jitter, seeds, s=10, color="black", zorder=3)
        if exact[i]:
            ax.annotate(
                "exact\n(0)",
                (i, floor),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
                color="tab:green",
                fontweight="bold",
            )
    ax.axhline(1.0, color="tab:red", linewidth=0.8, linestyle="--")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor / 2)
    ax.set_xticks(positions, names, rotation=45, ha="right")
    ax.set_ylabel("L1 error / HesScale's (log)")
    ax.set_title(
        f"Distance to the exact Hessian diagonal (bars: mean; dots: seeds)\n{setting}",
        fontsize=10,
    )
    fig.tight_layout()
    first = out / "normalised_error.png"
    fig.savefig(first, dpi=120)
    plt.close(fig)

    # methods x layers heat map, log color scale, each cell labelled with its mean L1 error
    table = np.array([[r["l1_by_layer"][layer] for layer in layer_names] for r in rows])
    largest = table.max() if table.size and table.max() > 0 else 1.0
    positive = table[table > EXACT * largest]
    cell_floor = positive.min() if positive.size else 1.0
    width = (1.5 if modules is None else 1.9) * len(layer_names) + 3.2
    fig, ax = plt.subplots(figsize=(width, 0.38 * len(rows) + 1.9))
    image = ax.imshow(
        np.maximum(table, cell_floor),
        cmap="viridis",
        norm=LogNorm(vmin=cell_floor, vmax=max(positive.max(), cell_floor * 10)),
        aspect="auto",
    )
    for (i, k), value in np.ndenumerate(table):
        text = "exact" if value <= EXACT * largest else f"{value:.2g}"
        light = image.norm(max(value, cell_floor)) > 0.6
        color = "black" if light else "white"
        ax.text(k, i, text, ha="center", va="center", fontsize="small", color=color)
    labels = layer_labels(layer_names, modules)
    ax.set_xticks(range(len(layer_names)), labels, fontsize=None if modules is None else "small")
    ax.set_yticks(range(len(rows)), names)
    fig.colorbar(image, ax=ax, label="mean L1 error per step")
    ax.set_title(
        f"Distance to the exact Hessian diagonal, by layer\n{setting}\n"
        f"exact: error below {EXACT:g} x the largest (round-off)",
        fontsize=9,
    )
    fig.tight_layout()
    second = out / "error_by_layer.png"
    fig.savefig(second, dpi=120)
    plt.close(fig)
    return [first, second]


def write_outputs(
    out: Path,
    config: StudyConfig,
    names: list[str],
    layer_names: list[str],
    errors: np.ndarray,
    rows: list[dict],
    seconds: float,
    modules: list[str] | None = None,
    left_out: list[str] | None = None,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "config": asdict(config),
        "reference": reference_description(config),
        "methods": names,
        "layers": layer_names,
        **({} if modules is None else {"layer_modules": modules}),
        **({"left_out": left_out} if left_out else {}),
        "seconds": seconds,
        "summary": rows,
        "errors": errors.tolist(),
    }
    paths = [out / "results.json", out / "errors.csv", out / "summary.csv"]
    paths[0].write_text(json.dumps(results, indent=1))
    with paths[1].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seed", "step", "method", "layer", "l1"])
        for s, step, j, k in np.ndindex(errors.shape):
            writer.writerow([s, step, names[j], layer_names[k], repr(float(errors[s, step, j, k]))])
    with paths[2].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["method", "l1_total", "normalised_mean", "normalised_std"]
            + [f"l1_{n.replace(' ', '_')}" for n in layer_names]
        )
        for row in rows:
            writer.writerow(
                [row["method"], row["l1_total"], row["normalised_mean"], row["normalised_std"]]
                + [row["l1_by_layer"][n] for n in layer_names]
            )
    return paths + plot(rows, layer_names, out, describe_setting(config), modules)


def run_study(config: StudyConfig, out: Path, progress: bool = True) -> dict:
    """Run every seed, write the outputs, and return the summary."""
    config.validate()
    methods = select_methods(config)
    stream = example_stream(config, 0)  # fail early if the data is missing
    names = [m.name for m in methods]
    model = build_model(config, stream.input_shape, stream.n_outputs)
    layer_names = layer_index(model)[0]
    modules = None if config.network == "mlp" else layer_modules(model)
    left_out = left_out_methods(config)
    start = time.perf_counter()
    with (
        warnings.catch_warnings(),
        tqdm(
            total=config.seeds * config.steps,
            desc="approx-quality",
            unit="step",
            disable=not progress,
        ) as bar,
    ):
        errors = np.stack([run_seed(seed, config, methods, bar) for seed in range(config.seeds)])
    seconds = time.perf_counter() - start
    rows = summarize(errors, methods, layer_names)
    paths = write_outputs(out, config, names, layer_names, errors, rows, seconds, modules, left_out)
    beats_all, lines = verdict(rows)
    return {
        "rows": rows,
        "layers": layer_names,
        "layer_modules": modules,
        "left_out": left_out,
        "beats_all": beats_all,
        "verdict": lines,
        "paths": paths,
        "seconds": seconds,
    }


def method_names() -> str:
    """The compared methods' names, with k standing for --samples."""
    names = [m.name for m in standard_estimators(2) if m.name != "Exact"]
    return ", ".join(
        name.removesuffix("-2") + ("-k" if name.endswith("-2") else "") for name in names
    )


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = StudyConfig()
    parser.description = __doc__.split("\n", 1)[1]
    add = parser.add_argument
    add("--data", choices=tuple(DATASETS), default=defaults.data, help="digits is built in")
    add(
        "--data-dir",
        default=defaults.data_dir,
        help="where MNIST etc. are, torchvision layout (default: $HESSCALE_DATA_DIR or data)",
    )
    add("--download", action="store_true", help="download the data into --data-dir if missing")
    add("--seeds", type=int, default=defaults.seeds, help="independent runs (seeds 0..N-1)")
    add("--steps", type=int, default=defaults.steps, help="examples (SGD steps) per seed")
    add(
        "--network",
        choices=NETWORKS,
        default=defaults.network,
        help="mlp: a chain of Linear + activation layers; residual: a residual MLP "
        "(h + act(W h + b) blocks); transformer: a pre-norm transformer reading the image as "
        "one token per row (2 heads, GELU MLP, mean-pooled); residual and transformer are "
        "compared with the methods that work on any nn.Module",
    )
    add(
        "--width",
        type=int,
        default=None,
        help="units per hidden layer (transformer: model width) (default: 32; transformer: 16)",
    )
    add(
        "--depth",
        type=int,
        default=None,
        help="hidden layers (residual: blocks; transformer: blocks) "
        "(default: mlp 3, residual 2, transformer 1)",
    )
    add(
        "--activation",
        choices=tuple(ACTIVATIONS),
        default=None,
        help="of the hidden layers of mlp and residual (default: tanh)",
    )
    add("--loss", choices=LOSSES, default=defaults.loss, help="cross-entropy or MSE (one-hot)")
    add("--lr", type=float, default=defaults.lr, help="SGD step size")
    add(
        "--samples", type=int, default=defaults.samples, help="k for GGN-MC-k, KFAC-k, Hutchinson-k"
    )
    add("--dtype", choices=("float32", "float64"), default=defaults.dtype, help="precision")
    add(
        "--methods",
        default=None,
        help=f"comma-separated subset, HesScale included (default: all of {method_names()}; "
        "KFAC and BL89 need BackPACK and a chain of modules, so only the mlp has them)",
    )
    add(
        "--out",
        help="output directory (default: results/approx-quality/DATA-NETWORK-LOSS; a folder "
        "that already holds results is refused unless --force)",
    )
    add("--force", action="store_true", help="overwrite the results already in --out")
    add("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    config = StudyConfig(
        data=args.data,
        data_dir=args.data_dir,
        download=args.download,
        seeds=args.seeds,
        steps=args.steps,
        network=args.network,
        width=args.width,
        depth=args.depth,
        activation=args.activation,
        loss=args.loss,
        lr=args.lr,
        samples=args.samples,
        dtype=args.dtype,
        methods=tuple(m.strip() for m in args.methods.split(",")) if args.methods else None,
    )
    out = Path(args.out or f"results/approx-quality/{config.data}-{config.network}-{config.loss}")
    if not args.force and (out / "results.json").exists():
        print(
            f"hesscale approx-quality: {out} already holds results; pass --out DIR to keep "
            "them, or --force to overwrite them.",
            file=sys.stderr,
        )
        return 2
    try:
        result = run_study(config, out, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"hesscale approx-quality: {error}", file=sys.stderr)
        return 2
    print(
        f"\nL1 distance to the exact Hessian diagonal: {config.data}, "
        f"{describe_network(config)}, {config.loss} loss, {config.seeds} seeds x "
        f"{config.steps} steps, SGD lr {config.lr} ({result['seconds']:.0f} s)\n"
    )
    if result["left_out"]:
        print(
            f"left out on the {config.network} network (BackPACK, needs a chain of modules): "
            + ", ".join(result["left_out"])
        )
    if result["layer_modules"] is not None:
        print(layer_legend(result["layers"], result["layer_modules"]))
    print(format_table(result["rows"], result["layers"]))
    print("\nHesScale vs. the methods that cost about one backprop:")
    print("\n".join(result["verdict"]))
    summary = verdict_summary(result["rows"])
    print(f"HesScale more accurate than all of them in every seed: {summary}")
    print("\nwrote " + ", ".join(str(p) for p in result["paths"]))
    return 0
