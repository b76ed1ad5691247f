"""Which default step size trains the README's example networks: one pass over the digits data.

The networks are those of examples/minimal_mlp.py (sigmoid/tanh MLP, 128 units; here with the
64 digit pixels as inputs) and examples/minimal_cnn.py (two 3x3 convolutions with max-pooling on
the 8x8 images), trained on a stream of single examples (batch size 1, as in the examples) for
one epoch. Printed: mean loss over the first and the last fifth of the stream and test accuracy,
for each step size and seed; Adam with its default lr=1e-3 for reference. Run from the root:

    python benchmarks/default_lr.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from backpack import extend
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_mlp import digits_splits  # noqa: E402

from hesscale.optim import AdaHesScale  # noqa: E402


def example_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 128), nn.Sigmoid(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10)
    )


def example_cnn(channels: int = 8) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, channels, kernel_size=3, padding=1),
        nn.Sigmoid(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * 4, 10),
    )


NETWORKS = {"mlp": (example_mlp, (-1, 64)), "cnn": (example_cnn, (-1, 1, 8, 8))}


def one_pass(network: str, optimizer: str, lr: float, seed: int, data) -> tuple[float, ...]:
    (x_train, y_train), _, (x_test, y_test) = data
    make, shape = NETWORKS[network]
    torch.manual_seed(seed)
    model, loss_fn = extend(make()), extend(nn.CrossEntropyLoss())
    if optimizer == "Adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = AdaHesScale(model.parameters(), lr=lr)
    losses = []
    for i in torch.randperm(len(x_train)):
        x, y = x_train[i : i + 1].reshape(shape), y_train[i : i + 1]
        if optimizer == "Adam":
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        else:
            loss = opt.step(lambda x=x, y=y: loss_fn(model(x), y))
        losses.append(float(loss.detach()))
    with torch.no_grad():
        acc = float((model(x_test.reshape(shape)).argmax(1) == y_test).float().mean())
    fifth = len(losses) // 5
    return sum(losses[:fifth]) / fifth, sum(losses[-fifth:]) / fifth, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3, 3e-3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = digits_splits()
    runs = [("AdaHesScale", lr) for lr in args.lrs] + [("Adam", 1e-3)]
    print(
        f"{'net':<5}{'optimizer':<13}{'lr':>8}{'seed':>6}{'loss first':>12}"
        f"{'loss last':>11}{'test acc':>10}"
    )
    for network in NETWORKS:
        for optimizer, lr in runs:
            for seed in args.seeds:
                first, last, acc = one_pass(network, optimizer, lr, seed, data)
                print(
                    f"{network:<5}{optimizer:<13}{lr:>8g}{seed:>6}{first:>12.3g}"
                    f"{last:>11.3g}{acc:>10.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
