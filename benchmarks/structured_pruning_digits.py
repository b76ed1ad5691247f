"""Structured (channel) pruning of a trained CNN on scikit-learn's digits with Torch-Pruning:
magnitude, Taylor and Optimal Brain Damage with several Hessian diagonals.

For each seed a CNN (conv 32 - conv 32 - max-pool - linear 64 - linear 10, ReLU; 8x8 images)
is trained with Adam; then Torch-Pruning removes the same share of channels from every layer
but the last (``BasePruner``, one step), ranked by each importance, and the test accuracy is
measured right after pruning and after a short fine-tuning (Adam, the same step size).
Importances, each summed over the weights a channel removes and combined over the layers of
its group as Torch-Pruning does (mean, normalised by the mean):

- random (``tp.importance.RandomImportance``), a floor;
- magnitude, |w|^2 (``MagnitudeImportance(p=2)``);
- Taylor, |w g| with g the gradient of the training split's summed loss
  (``TaylorImportance``);
- OBD with the empirical Fisher, w^2 sum_i g_i^2 over the training examples (per-example
  gradients; Torch-Pruning's ``HessianImportance`` given that diagonal);
- OBD with HesScale, w^2 h (``hesscale.integrations.pruning.OBDImportance``; in a ReLU network
  HesScale and HesScaleGN coincide: ReLU, max-pooling and linear maps have no curvature).

Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/structured_pruning_digits.py   # the table (~2 minutes)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch
import torch_pruning as tp
from digits_mlp import accuracy, digits_splits, finish_study
from pruning_digits import empirical_fisher, mean_spread
from torch import nn

from hesscale.integrations.pruning import OBDImportance

RATIOS = (0.25, 0.5, 0.75)
METHODS = ("random", "magnitude", "Taylor", "OBD empirical Fisher", "OBD HesScale")
LEARNING_RATE = 1e-3


def sum_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y, reduction="sum")


def make_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def train(model: nn.Module, x, y, epochs: int, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def fill_grad_with(model: nn.Module, diagonals: dict[str, torch.Tensor]) -> None:
    """p.grad := the given diagonal (Torch-Pruning's OBD and Taylor read p.grad)."""
    for name, p in model.named_parameters():
        p.grad = diagonals[name].clone()


def importance(method: str, model: nn.Module, data):
    """The Torch-Pruning importance for ``method``, with p.grad set where it reads it."""
    if method == "random":
        return tp.importance.RandomImportance()
    if method == "magnitude":
        return tp.importance.MagnitudeImportance(p=2)
    if method == "Taylor":
        model.zero_grad()
        for x, y in data:
            sum_loss(model(x), y).backward()
        return tp.importance.TaylorImportance()
    if method == "OBD empirical Fisher":
        fill_grad_with(model, empirical_fisher(model, data))
        return tp.importance.HessianImportance()
    return OBDImportance(model, data, sum_loss, gn=True)


def prune(model: nn.Sequential, method: str, ratio: float, data, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)  # (random importance)
    scorer = importance(method, model, data)
    pruner = tp.pruner.BasePruner(
        model, torch.zeros(1, 64), scorer, pruning_ratio=ratio, ignored_layers=[model[-1]]
    )
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def run(args) -> list[dict]:
    rows = []
    for seed in args.seeds:
        (x, y), _, (x_test, y_test) = digits_splits(seed)
        torch.manual_seed(seed)
        trained = train(make_cnn(), x, y, args.epochs, seed)
        data = list(zip(x.split(256), y.split(256), strict=True))
        dense = accuracy(trained, x_test, y_test)
        rows.append({"seed": seed, "method": "dense", "ratio": 0.0, "acc": dense, "tuned": dense})
        for method in METHODS:
            for ratio in RATIOS:
                model = prune(copy.deepcopy(trained), method, ratio, data, seed)
                pruned = accuracy(model, x_test, y_test)
                tuned = accuracy(train(model, x, y, args.finetune, seed), x_test, y_test)
                rows.append(
                    {"seed": seed, "method": method, "ratio": ratio, "acc": pruned,
                     "tuned": tuned, "parameters": sum(p.numel() for p in model.parameters())}
                )  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict], finetune: int) -> str:
    dense = [r["acc"] for r in rows if r["method"] == "dense"]
    lines = [
        f"Dense test accuracy: {statistics.mean(dense):.4f} (mean over seeds). Each cell: right "
        f"after pruning / after {finetune} epochs of fine-tuning.",
        "",
        "| importance | " + " | ".join(f"{r:.0%} of channels" for r in RATIOS) + " |",
        "|---|" + "---:|" * len(RATIOS),
    ]
    for method in METHODS:
        cells = []
        for ratio in RATIOS:
            picked = [r for r in rows if r["method"] == method and r["ratio"] == ratio]
            cells.append(
                f"{mean_spread([r['acc'] for r in picked], 3)} / "
                f"{mean_spread([r['tuned'] for r in picked], 3)}"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune", type=int, default=2, help="epochs after pruning")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    finish_study(args, run, lambda rows: table(rows, args.finetune))


if __name__ == "__main__":
    main()
