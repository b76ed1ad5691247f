"""What AdaHesScale(GN) does on the char-level GPT, step by step, per kind of parameter.

Trains hesscale.experiments.text's GPT (2 layers, width 64, 64 characters, batch 16) on the
Python documentation and prints, for the first steps and then every ``--every`` steps, per
kind of parameter (token / position embedding, LayerNorm, attention, MLP, biases): the median
and max of |g| and |h|, the fraction of h < 0 and of |h| < 1e-3 * median |h|, the median and
max of the step |delta p|, and the fraction of steps clipped (``max_update`` set); plus the
loss and the largest softmax probability of the batch (saturation).

python benchmarks/optimizer_diagnosis.py --optimizer adahesscalegn --lr 1e-2 --variant paper
"""

from __future__ import annotations

import argparse
import math

import torch

import hesscale
from hesscale.experiments.tasks import TaskSettings
from hesscale.experiments.text import CharGPT, char_text
from hesscale.optim import AdaHesScale, AdaHesScaleGN


def kind(name: str) -> str:
    if name.endswith("tokens.weight"):
        return "token embedding (tied)"
    if name.endswith("positions.weight"):
        return "position embedding"
    if "norm" in name:
        return "LayerNorm"
    if name.endswith("bias"):
        return "other biases"
    if "attention" in name:
        return "attention weights"
    return "MLP weights"


def quantiles(values: list[torch.Tensor]) -> tuple[float, float]:
    flat = torch.cat([v.flatten() for v in values]).double()
    return flat.median().item(), flat.max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--optimizer", choices=["adahesscale", "adahesscalegn"], default="adahesscalegn"
    )
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--variant", choices=["floored", "clipped", "paper"], default="floored")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--first", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    task = char_text(TaskSettings("char_text", batch_size=16, seed=args.seed))
    model = CharGPT(task.input_shape, task.n_outputs)
    cls = AdaHesScaleGN if args.optimizer == "adahesscalegn" else AdaHesScale
    opt = cls(model.parameters(), lr=args.lr, variant=args.variant)
    names = dict(model.named_parameters())
    kinds = sorted({kind(n) for n in names})
    for step in range(1, args.steps + 1):
        x, y = task.next_batch()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        hesscale.backward(loss, gn=cls.gn)
        before = {n: p.detach().clone() for n, p in names.items()}
        p_max = logits.softmax(-1).max().item()
        report = step <= args.first or step % args.every == 0
        try:
            opt.step()
        except FloatingPointError as error:
            print(f"step {step}: {error}")
            return
        if not report and math.isfinite(loss.item()):
            continue
        print(
            f"step {step}: loss {loss.item() / math.log(2):.3f} bits/char, "
            f"max softmax p {p_max:.3f}"
        )
        print(
            f"  {'kind':24s} {'|g| med':>8s} {'|g| max':>8s} {'|h| med':>8s} {'|h| max':>8s} "
            f"{'h<0':>5s} {'h~0':>5s} {'|dp| med':>8s} {'|dp| max':>8s}"
        )
        for k in kinds:
            group = [n for n in names if kind(n) == k]
            g = [names[n].grad.abs() for n in group]
            h = [getattr(names[n], cls.savefield) for n in group]
            dp = [(names[n].detach() - before[n]).abs() for n in group]
            h_med = quantiles([t.abs() for t in h])[0]
            flat_h = torch.cat([t.flatten() for t in h])
            negative = (flat_h < 0).double().mean().item()
            tiny = (flat_h.abs() < 1e-3 * h_med).double().mean().item()
            print(
                f"  {k:24s} {quantiles(g)[0]:8.1e} {quantiles(g)[1]:8.1e} {h_med:8.1e} "
                f"{quantiles([t.abs() for t in h])[1]:8.1e} {negative:5.2f} {tiny:5.2f} "
                f"{quantiles(dp)[0]:8.1e} {quantiles(dp)[1]:8.1e}"
            )
        if not math.isfinite(loss.item()):
            return


if __name__ == "__main__":
    main()
