"""Continual learning on streams of scikit-learn's digits: UPGD and EWC (HesScaleGN
importances) against SGD and Adam.

The streams are hesscale's ``digits-input-permuted`` (a new pixel permutation every task) and
``digits-label-permuted`` (a new label permutation every task): ``--tasks`` tasks of
``--task-steps`` mini-batches of 16. Each batch is scored before the update on it (online
accuracy) and again after it; a task's average online accuracy is the mean over its batches,
and its plasticity the mean of max(0, 1 - loss after / loss before) (Elsayed and Mahmood,
2024). Network: MLP 64-128-128-10 with ReLU. Methods and their step sizes, fixed before the
runs: SGD, SGD+EWC (strength 10, importances from the last 10 batches of each task, decay
0.9; it is told where tasks end, the others are not), Adam, UPGD with first- and with
second-order (HesScale) utility (sigma 0.01, beta_utility 0.999); four step sizes each, the
best chosen per method and stream by the average online accuracy over all tasks and seeds.
Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/continual_digits.py --out continual.json
    python benchmarks/continual_digits.py --plot continual.json --figure docs/img/uses_continual.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import hesscale
from hesscale.experiments.tasks import Task
from hesscale.integrations.continual import EWC
from hesscale.optim import UPGD

STREAMS = ("digits-input-permuted", "digits-label-permuted")
# (a first grid without the largest values put every method's best at its top edge; the
# grid was then extended by one value for every method)
STEP_SIZES = {
    "SGD": (0.01, 0.03, 0.1, 0.3),
    "SGD+EWC": (0.01, 0.03, 0.1, 0.3),
    "Adam": (3e-4, 1e-3, 3e-3, 1e-2),
    "UPGD first-order": (0.01, 0.03, 0.1, 0.3),
    "UPGD second-order (HesScale)": (0.01, 0.03, 0.1, 0.3),
}
LOSS_SUM = nn.CrossEntropyLoss(reduction="sum")


def make_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def one_run(stream: str, method: str, lr: float, seed: int, tasks: int, task_steps: int):
    torch.manual_seed(seed)
    task = Task(stream, batch_size=16, seed=seed, change_freq=task_steps)
    model = make_mlp()
    ewc = EWC(model, strength=10.0, decay=0.9) if method == "SGD+EWC" else None
    if method in ("SGD", "SGD+EWC"):
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    elif method == "Adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        utility = "first" if "first" in method else "second"
        opt = UPGD(
            model.parameters(),
            lr=lr,
            sigma=0.01,
            beta_utility=0.999,
            utility=utility,
            generator=torch.Generator().manual_seed(seed),
        )
    second_order = method.startswith("UPGD second")
    accuracy, plasticity = [], []
    for _ in range(tasks):
        hits, plastic, recent = [], [], []
        for _ in range(task_steps):
            x, y = task.next_batch()
            opt.zero_grad()
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            hits.append((out.argmax(-1) == y).float().mean().item())
            objective = loss + ewc.penalty() if ewc is not None else loss
            if second_order:
                hesscale.backward(objective)
            else:
                objective.backward()
            opt.step()
            with torch.no_grad():
                after = nn.functional.cross_entropy(model(x), y).item()
            plastic.append(max(0.0, 1 - after / max(loss.item(), 1e-12)))
            recent = (recent + [(x, y)])[-10:]
        if ewc is not None:
            ewc.consolidate(recent, LOSS_SUM)
        accuracy.append(statistics.mean(hits))
        plasticity.append(statistics.mean(plastic))
    return accuracy, plasticity


def run(args) -> list[dict]:
    done = []
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        done = json.loads(out.read_text())  # resume: keep finished runs
    finished = {(r["stream"], r["method"], r["lr"], r["seed"]) for r in done}
    for stream in STREAMS:
        for method, step_sizes in STEP_SIZES.items():
            for lr in step_sizes:
                for seed in args.seeds:
                    if (stream, method, lr, seed) in finished:
                        continue
                    start = time.perf_counter()
                    acc, plast = one_run(stream, method, lr, seed, args.tasks, args.task_steps)
                    done.append(
                        {
                            "stream": stream,
                            "method": method,
                            "lr": lr,
                            "seed": seed,
                            "accuracy": acc,
                            "plasticity": plast,
                            "seconds": time.perf_counter() - start,
                        }
                    )
                    print(
                        json.dumps(
                            {
                                k: v
                                for k, v in done[-1].items()
                                if k not in ("accuracy", "plasticity")
                            }
                            | {"mean_acc": statistics.mean(acc)}
                        ),
                        flush=True,
                    )
                    if out is not None:
                        out.write_text(json.dumps(done))
    return done


def best(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Per (stream, method): the runs of the step size with the best average online accuracy
    over all tasks and seeds."""
    chosen = {}
    for stream in STREAMS:
        for method, step_sizes in STEP_SIZES.items():

            def score(lr, stream=stream, method=method):
                runs = [
                    r for r in rows if (r["stream"], r["method"], r["lr"]) == (stream, method, lr)
                ]
                if not runs:  # not run (yet)
                    return float("-inf")
                return statistics.mean(statistics.mean(r["accuracy"]) for r in runs)

            lr = max(step_sizes, key=score)
            if score(lr) == float("-inf"):
                continue
            chosen[stream, method] = [
                r for r in rows if (r["stream"], r["method"], r["lr"]) == (stream, method, lr)
            ]
    return chosen


def table(rows: list[dict]) -> str:
    lines = [
        "| stream | method | step size | avg online accuracy (all tasks) | last 10 tasks "
        "| plasticity (all tasks) | plasticity (last 10 tasks) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (stream, method), runs in best(rows).items():

        def avg(key, part=slice(None), runs=runs):
            return statistics.mean(statistics.mean(r[key][part]) for r in runs)

        last = slice(-10, None)
        lines.append(
            f"| {stream} | {method} | {runs[0]['lr']:g} | {avg('accuracy'):.4f} | "
            f"{avg('accuracy', last):.4f} | {avg('plasticity'):.4f} | "
            f"{avg('plasticity', last):.4f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], figure: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for col, stream in enumerate(STREAMS):
        for (s, method), runs in best(rows).items():
            if s != stream:
                continue
            for row, key in enumerate(("accuracy", "plasticity")):
                curve = torch.tensor([r[key] for r in runs]).mean(0)
                axes[row, col].plot(
                    range(1, len(curve) + 1), curve, label=f"{method} (lr {runs[0]['lr']:g})"
                )
        axes[0, col].set_title(stream)
        axes[0, col].set_ylabel("average online accuracy")
        axes[1, col].set_ylabel("plasticity")
        axes[1, col].set_xlabel("task")
        axes[0, col].legend(fontsize=7)
    fig.tight_layout()
    Path(figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--task-steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default=None, help="JSON of the runs (resumed if it exists)")
    parser.add_argument("--plot", default=None, help="only tabulate and plot this JSON")
    parser.add_argument("--figure", default=None, help="write the figure here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = json.loads(Path(args.plot).read_text()) if args.plot else run(args)
    print(table(rows))
    if args.figure:
        plot(rows, args.figure)


if __name__ == "__main__":
    main()
