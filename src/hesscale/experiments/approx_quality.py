"""Approximation quality: how close is each diagonal estimate to the exact Hessian diagonal?

The study of the HesScale paper (Elsayed & Mahmood 2022), as one command. An MLP (default:
three hidden layers of 32 tanh units) learns from a stream of single examples. At every step
each method estimates the Hessian diagonal of that example's loss; we record the L1 distance
to the exact diagonal (BackPACK's DiagHessian), per layer and in total; then the network takes
an SGD step, so curvature is measured along a learning trajectory. Repeated over seeds.

Reported: each method's mean total L1 error normalised by HesScale's (HesScale = 1; per-seed
ratios, then their mean and spread), and the mean L1 error of each layer.

Outputs under ``--out``: ``results.json`` (configuration, summary and the raw errors,
indexed [seed][step][method][layer]), ``errors.csv`` (the same raw errors, one row each),
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

from hesscale.estimators import Estimator, exact_hessian, standard_estimators
from hesscale.experiments.networks import ACTIVATIONS as NETWORK_ACTIVATIONS
from hesscale.experiments.networks import fully_connected
from hesscale.experiments.tasks import DATASETS, Task

ACTIVATIONS = tuple(NETWORK_ACTIVATIONS)
LOSSES = ("ce", "mse")
NORMALISER = "HesScale"
HESSCALE_VARIANTS = ("HesScale", "HesScaleGN")
TIE = 1e-9  # relative difference below which two errors count as equal (e.g. BL89 with MSE)


@dataclass(frozen=True)
class StudyConfig:
    data: str = "digits"
    data_dir: str | None = None  # None: hesscale.experiments.tasks.default_data_dir()
    download: bool = False
    seeds: int = 5
    steps: int = 200
    width: int = 32
    depth: int = 3
    activation: str = "tanh"
    loss: str = "ce"
    lr: float = 0.004
    samples: int = 10
    dtype: str = "float64"
    methods: tuple[str, ...] | None = None  # None: all of standard_estimators(samples)

    def validate(self) -> None:
        for name in ("seeds", "steps", "width", "depth", "samples"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}")
        if self.lr < 0 or not math.isfinite(self.lr):
            raise ValueError(f"--lr must be a finite non-negative number, got {self.lr}")
        choices = {
            "data": tuple(DATASETS),
            "activation": tuple(ACTIVATIONS),
            "loss": LOSSES,
            "dtype": ("float32", "float64"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"--{name} {getattr(self, name)!r} is not supported; "
                    f"choose one of {', '.join(allowed)}"
                )


def select_methods(config: StudyConfig) -> list[Estimator]:
    """The compared methods (the exact reference itself excluded)."""
    methods = [m for m in standard_estimators(config.samples) if m.name != "Exact"]
    if config.methods is None:
        return methods
    by_name = {m.name: m for m in methods}
    unknown = [name for name in config.methods if name not in by_name]
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown)}; available with --samples "
            f"{config.samples}: {', '.join(by_name)}"
        )
    if NORMALISER not in config.methods:
        raise ValueError(f"--methods must include {NORMALISER}: errors are normalised by it")
    return [by_name[name] for name in dict.fromkeys(config.methods)]


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
    model = fully_connected(
        (math.prod(stream.input_shape),),
        n_classes,
        [config.width] * config.depth,
        config.activation,
    ).to(dtype)
    loss_fn = nn.CrossEntropyLoss() if config.loss == "ce" else nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    reference = exact_hessian()
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
        loss_fn(model(x), y).backward()
        optimizer.step()
        if progress is not None:
            progress.update()
    return errors


def summarise(errors: np.ndarray, methods: list[Estimator], layer_names: list[str]) -> list[dict]:
    """Per method: mean total L1, its ratio to HesScale's per seed, and per-layer mean L1."""
    names = [m.name for m in methods]
    total = errors.sum(-1).mean(1)  # (seeds, methods): mean over steps of the total L1
    normalised = total / total[:, [names.index(NORMALISER)]]
    rows = []
    for j, method in enumerate(methods):
        ratios = normalised[:, j]
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


def describe_setting(config: StudyConfig) -> str:
    """The study's setting in one line, for titles."""
    loss = {"ce": "cross-entropy", "mse": "MSE"}[config.loss]
    return (
        f"{config.data}, MLP {config.depth}x{config.width} {config.activation}, {loss}, "
        f"{config.seeds} seeds x {config.steps} steps"
    )


def layer_labels(layer_names: list[str]) -> list[str]:
    """The layer names with the last one marked as the output layer."""
    return [*layer_names[:-1], f"{layer_names[-1]} (output)"] if layer_names else []


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


def plot(rows: list[dict], layer_names: list[str], out: Path, setting: str = "") -> list[Path]:
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
    colours = ["tab:red" if n == NORMALISER else "tab:blue" for n in names]
    values = np.array([v for r in rows for v in (r["normalised_mean"], *r["normalised_per_seed"])])
    largest = values.max() if values.size else 1.0
    positive = values[values > EXACT * largest]
    floor = positive.min() / 5 if positive.size else 1e-3  # where exact (zero) errors are drawn

    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2), 4.6))
    means = np.array([r["normalised_mean"] for r in rows])
    exact = means <= EXACT * largest
    ax.bar(positions[~exact], means[~exact], color=np.array(colours)[~exact], alpha=0.6)
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

    # methods x layers heat map, log colour scale, each cell labelled with its mean L1 error
    table = np.array([[r["l1_by_layer"][layer] for layer in layer_names] for r in rows])
    largest = table.max() if table.size and table.max() > 0 else 1.0
    positive = table[table > EXACT * largest]
    cell_floor = positive.min() if positive.size else 1.0
    fig, ax = plt.subplots(figsize=(1.5 * len(layer_names) + 3.2, 0.38 * len(rows) + 1.9))
    image = ax.imshow(
        np.maximum(table, cell_floor),
        cmap="viridis",
        norm=LogNorm(vmin=cell_floor, vmax=max(positive.max(), cell_floor * 10)),
        aspect="auto",
    )
    for (i, k), value in np.ndenumerate(table):
        text = "exact" if value <= EXACT * largest else f"{value:.2g}"
        light = image.norm(max(value, cell_floor)) > 0.6
        colour = "black" if light else "white"
        ax.text(k, i, text, ha="center", va="center", fontsize="small", color=colour)
    ax.set_xticks(range(len(layer_names)), layer_labels(layer_names))
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
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "config": asdict(config),
        "reference": "exact Hessian diagonal (BackPACK DiagHessian)",
        "methods": names,
        "layers": layer_names,
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
    return paths + plot(rows, layer_names, out, describe_setting(config))


def run_study(config: StudyConfig, out: Path, progress: bool = True) -> dict:
    """Run every seed, write the outputs, and return the summary."""
    config.validate()
    methods = select_methods(config)
    example_stream(config, 0)  # fail early if the data is missing
    names = [m.name for m in methods]
    layer_names = [f"layer {i + 1}" for i in range(config.depth + 1)]
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
    rows = summarise(errors, methods, layer_names)
    paths = write_outputs(out, config, names, layer_names, errors, rows, seconds)
    beats_all, lines = verdict(rows)
    return {
        "rows": rows,
        "layers": layer_names,
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
    add("--width", type=int, default=defaults.width, help="units per hidden layer")
    add("--depth", type=int, default=defaults.depth, help="number of hidden layers")
    add(
        "--activation",
        choices=tuple(ACTIVATIONS),
        default=defaults.activation,
        help="of the hidden layers",
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
        help=f"comma-separated subset, HesScale included (default: all of {method_names()})",
    )
    add("--out", default="results/approx-quality", help="output directory")
    add("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    config = StudyConfig(
        data=args.data,
        data_dir=args.data_dir,
        download=args.download,
        seeds=args.seeds,
        steps=args.steps,
        width=args.width,
        depth=args.depth,
        activation=args.activation,
        loss=args.loss,
        lr=args.lr,
        samples=args.samples,
        dtype=args.dtype,
        methods=tuple(m.strip() for m in args.methods.split(",")) if args.methods else None,
    )
    try:
        result = run_study(config, Path(args.out), progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"hesscale approx-quality: {error}", file=sys.stderr)
        return 2
    print(
        f"\nL1 distance to the exact Hessian diagonal: {config.data}, MLP {config.depth}x"
        f"{config.width} {config.activation}, {config.loss} loss, {config.seeds} seeds x "
        f"{config.steps} steps, SGD lr {config.lr} ({result['seconds']:.0f} s)\n"
    )
    print(format_table(result["rows"], result["layers"]))
    print("\nHesScale vs. the methods that cost about one backprop:")
    print("\n".join(result["verdict"]))
    summary = verdict_summary(result["rows"])
    print(f"HesScale more accurate than all of them in every seed: {summary}")
    print("\nwrote " + ", ".join(str(p) for p in result["paths"]))
    return 0
