"""AdaHesScale vs Adam training an MLP on scikit-learn's 8x8 digits, with the same budget.

Both optimizers get the same network, mini-batches, number of epochs and a step-size grid of
the same size; the step size is chosen per optimizer by mean validation accuracy over seeds,
and test accuracy is reported for that choice. Wall time per run is printed too (AdaHesScale
does more work per step). Run from the repository root:

    python benchmarks/digits_mlp.py                      # the default study (a few minutes)
    python benchmarks/digits_mlp.py --epochs 2 --seeds 0  # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from backpack import extend
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import tqdm

from hesscale.optim import AdaGGNMC, AdaHesScale, AdaHesScaleGN, AdaHessian

OPTIMIZERS = {
    "Adam": (torch.optim.Adam, [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]),
    "AdaHesScale": (AdaHesScale, [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]),
    "AdaHesScaleGN": (AdaHesScaleGN, [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]),
    "AdaGGNMC": (AdaGGNMC, [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]),
    "AdaHessian": (AdaHessian, [1e-2, 3e-2, 1e-1, 3e-1, 1.0]),
}


def digits_splits(seed: int = 0):
    """Train / validation / test (60 / 15 / 25 %), stratified, pixels scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.2, stratify=y_rest, random_state=seed
    )
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def finish_study(args: argparse.Namespace, run, table) -> None:
    """The digits studies' common end: run on one thread, print the table of the rows and
    write them as JSON to ``args.out`` (when given)."""
    torch.set_num_threads(1)
    rows = run(args)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


def make_mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 10),
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train(name: str, lr: float, seed: int, data, epochs: int, batch_size: int, hidden: int):
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data
    torch.manual_seed(seed)
    model = extend(make_mlp(hidden))
    loss_fn = extend(nn.CrossEntropyLoss())
    opt_cls, _ = OPTIMIZERS[name]
    opt = opt_cls(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    diverged = False
    for _ in range(epochs):
        perm = torch.randperm(len(x_train), generator=order)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = x_train[idx], y_train[idx]
            try:
                if name == "Adam":
                    opt.zero_grad()
                    loss = loss_fn(model(xb), yb)
                    loss.backward()
                    opt.step()
                else:
                    loss = opt.step(lambda xb=xb, yb=yb: loss_fn(model(xb), yb))
            except FloatingPointError:
                diverged = True
                break
            if not torch.isfinite(loss):
                diverged = True
                break
        if diverged:
            break
    seconds = time.perf_counter() - start
    if diverged:
        return {"val": 0.0, "test": 0.0, "seconds": seconds, "diverged": True}
    return {
        "val": accuracy(model, x_val, y_val),
        "test": accuracy(model, x_test, y_test),
        "seconds": seconds,
        "diverged": False,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = digits_splits()

    jobs = [
        (name, lr, seed)
        for name in args.optimizers
        for lr in OPTIMIZERS[name][1]
        for seed in args.seeds
    ]
    results = []
    for name, lr, seed in tqdm(jobs, desc="runs"):
        run = train(name, lr, seed, data, args.epochs, args.batch_size, args.hidden)
        results.append({"optimizer": name, "lr": lr, "seed": seed, **run})

    print(
        f"\n{len(data[0][0])} train / {len(data[1][0])} val / {len(data[2][0])} test digits, "
        f"MLP 64-{args.hidden}-{args.hidden}-10 (tanh), {args.epochs} epochs, "
        f"batch {args.batch_size}, seeds {args.seeds}"
    )
    print(f"{'optimizer':<14}{'lr':>8}{'val acc':>10}{'test acc':>14}{'s/run':>8}")
    best = {}
    for name in args.optimizers:
        for lr in OPTIMIZERS[name][1]:
            runs = [r for r in results if r["optimizer"] == name and r["lr"] == lr]
            val = statistics.mean(r["val"] for r in runs)
            tests = [r["test"] for r in runs]
            sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
            secs = statistics.mean(r["seconds"] for r in runs)
            flag = " (diverged)" if any(r["diverged"] for r in runs) else ""
            print(
                f"{name:<14}{lr:>8g}{val:>10.4f}{statistics.mean(tests):>9.4f}±{sd:.4f}"
                f"{secs:>8.1f}{flag}"
            )
            if name not in best or val > best[name][1]:
                best[name] = (lr, val, statistics.mean(tests), sd)
    print("\nbest step size by validation accuracy -> test accuracy (mean ± sd over seeds)")
    for name, (lr, val, test, sd) in best.items():
        print(f"{name:<14} lr={lr:<8g} val={val:.4f} test={test:.4f} ± {sd:.4f}")
    if args.out is not None:
        args.out.write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
