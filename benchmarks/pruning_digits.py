"""Pruning a trained MLP on scikit-learn's digits: magnitude vs Optimal Brain Damage with
several Hessian diagonals.

For each seed an MLP (64-128-128-10, tanh) is trained with Adam; then a share of the weights
of its three Linear layers (globally, biases kept) is removed with
``torch.nn.utils.prune.global_unstructured`` ranked by each saliency, and the test accuracy
is measured without fine-tuning. Saliencies: |w| (magnitude); OBD 1/2 h w^2 with h the
training split's HesScaleGN or HesScale diagonal (hesscale.integrations.pruning), the sum of
squared per-example gradients (the empirical Fisher), or the exact GGN and exact Hessian
diagonals (BackPACK's DiagGGNExact / DiagHessian, exact for this MLP). Run from the repository
root:

    OMP_NUM_THREADS=1 python benchmarks/pruning_digits.py            # the table (a minute)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch
from backpack import backpack, extend
from backpack.extensions import DiagGGNExact, DiagHessian
from digits_mlp import accuracy, digits_splits, finish_study
from torch import nn
from torch.nn.utils import prune

from hesscale.integrations.pruning import importance_scores

LOSS = nn.CrossEntropyLoss(reduction="sum")
AMOUNTS = (0.5, 0.7, 0.9)


def make_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10)
    )


def train(seed: int, epochs: int) -> nn.Sequential:
    torch.manual_seed(seed)
    (x, y), _, _ = digits_splits(seed)
    model = make_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def weights(model: nn.Sequential) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model if isinstance(m, nn.Linear)]


def backpack_diagonal(model: nn.Sequential, data, extension) -> list[torch.Tensor]:
    """The exact GGN or Hessian diagonal of the summed loss from BackPACK."""
    model = extend(copy.deepcopy(model))
    loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))
    totals = None
    for x, y in data:
        model.zero_grad()
        with backpack(extension()):
            loss_fn(model(x), y).backward()
        name = "diag_ggn_exact" if extension is DiagGGNExact else "diag_h"
        diags = [getattr(m.weight, name).detach() for m in model if isinstance(m, nn.Linear)]
        totals = diags if totals is None else [t + d for t, d in zip(totals, diags, strict=True)]
    return totals


def empirical_fisher(model: nn.Module, data) -> dict[str, torch.Tensor]:
    """Per parameter name: sum over the examples of the squared per-example gradient of the
    summed cross-entropy."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_one(p, x, y):
        out = torch.func.functional_call(model, p, (x[None],))
        return nn.functional.cross_entropy(out, y[None], reduction="sum")

    per_example = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))
    totals = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y in data:
        for n, g in per_example(params, x, y).items():
            totals[n] += g.square().sum(0)
    return totals


def saliencies(method: str, model: nn.Sequential, data) -> dict:
    params = weights(model)
    if method == "magnitude":
        return {key: key[0].weight.detach().abs() for key in params}
    if method in ("OBD HesScaleGN", "OBD HesScale"):
        return importance_scores(model, params, data, LOSS, gn=method == "OBD HesScaleGN")
    if method == "OBD empirical Fisher":
        fisher = empirical_fisher(model, data)
        h = [fisher[f"{i}.weight"] for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    elif method == "OBD exact GGN":
        h = backpack_diagonal(model, data, DiagGGNExact)
    else:
        h = backpack_diagonal(model, data, DiagHessian)
    return {
        key: 0.5 * d * key[0].weight.detach().square() for key, d in zip(params, h, strict=True)
    }


METHODS = (
    "magnitude",
    "OBD HesScaleGN",
    "OBD HesScale",
    "OBD empirical Fisher",
    "OBD exact GGN",
    "OBD exact Hessian",
)


def run(args) -> list[dict]:
    rows = []
    for seed in args.seeds:
        trained = train(seed, args.epochs)
        (x, y), _, (x_test, y_test) = digits_splits(seed)
        data = list(zip(x.split(256), y.split(256), strict=True))
        rows.append(
            {
                "seed": seed,
                "method": "dense",
                "amount": 0.0,
                "acc": accuracy(trained, x_test, y_test),
            }
        )
        for method in METHODS:
            scores = saliencies(method, trained, data)
            for amount in AMOUNTS:
                model = copy.deepcopy(trained)
                params = weights(model)
                by_name = {k[0]: v for k, v in zip(weights(trained), scores.values(), strict=True)}
                remapped = {
                    (m, "weight"): by_name[t]
                    for (m, _), (t, _) in zip(params, weights(trained), strict=True)
                }
                prune.global_unstructured(
                    params,
                    pruning_method=prune.L1Unstructured,
                    amount=amount,
                    importance_scores=remapped,
                )
                rows.append(
                    {
                        "seed": seed,
                        "method": method,
                        "amount": amount,
                        "acc": accuracy(model, x_test, y_test),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    dense = [r["acc"] for r in rows if r["method"] == "dense"]
    lines = [
        f"Dense test accuracy: {statistics.mean(dense):.4f} (mean over seeds)",
        "",
        "| saliency | " + " | ".join(f"{a:.0%} pruned" for a in AMOUNTS) + " |",
        "|---|" + "---:|" * len(AMOUNTS),
    ]
    for method in METHODS:
        cells = [
            mean_spread([r["acc"] for r in rows if r["method"] == method and r["amount"] == a])
            for a in AMOUNTS
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_spread(values: list[float], places: int = 4) -> str:
    """'mean ± standard deviation' over the seeds (± 0 for one seed)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{places}f} ± {spread:.{places}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    finish_study(parser.parse_args(), run, table)


if __name__ == "__main__":
    main()
