"""The optimizer study's report: ``python -m hesscale.experiments.optimizer_report RESULTS...``.

Each RESULTS folder is one sweep of a spec ``optimizers_*`` (one model, every optimizer, a grid
of step sizes fixed in the spec, several seeds, validation loss every ``eval_every`` steps).
For each optimizer the best step size is the one with the lowest mean final validation loss
(a step size with any diverged seed counts as diverged). Written to ``--out`` (default
``results/optimizers``):

  optimizers.md                 one table per model: best step size, final validation loss
                                (bits per character for the text models), mean +- standard
                                error over seeds, the step sizes that diverged, seconds per
                                training step and the final loss of every step size
  curves_<model>.png            validation loss of each optimizer's best step size against
                                steps and against seconds (steps x its seconds per step)
  sensitivity_<model>.png       final validation loss against step size

Seconds per step: each optimizer's whole training step (forward, backward with its curvature,
step) at its best step size, measured in one process, one thread, interleaved in rotating
order, as this thread's CPU time (``time.thread_time``), median over ``--timing-rounds``
rounds: the runs' own wall-clock times depend on what else shared the machine, the CPU time
much less. ``--no-timing`` leaves it out.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from hesscale.experiments.logs import iter_logs

TEXT_TASK = "hesscale.experiments.text:char_text"


def _unit(log: dict[str, Any]) -> tuple[float, str]:
    """Divisor of the loss and its unit: bits per character for text, nats otherwise."""
    return (math.log(2), "bits/char") if log["config"]["task"] == TEXT_TASK else (1.0, "nats")


def collect(root: str | Path) -> dict[str, dict[float, list[dict[str, Any]]]]:
    """learner label -> lr -> the complete run logs (one per seed)."""
    runs: dict[str, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for _, log in iter_logs(root):
        if log.get("status") in ("finished", "diverged"):
            runs[log["learner"]][float(log["hyperparameters"]["lr"])].append(log)
    return runs


def final_loss(log: dict[str, Any]) -> float:
    """The last validation loss (in the report's unit); inf if the run diverged."""
    if log["status"] != "finished" or not log["test"]["loss"]:
        return math.inf
    divisor, _ = _unit(log)
    value = log["test"]["loss"][-1] / divisor
    return value if math.isfinite(value) else math.inf


def mean_se(values: list[float]) -> tuple[float, float]:
    if any(not math.isfinite(v) for v in values):
        return math.inf, math.nan
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.fmean(values), se


def best_lr(by_lr: dict[float, list[dict[str, Any]]]) -> float:
    return min(sorted(by_lr), key=lambda lr: mean_se([final_loss(g) for g in by_lr[lr]])[0])


def step_seconds(logs: list[dict[str, Any]], rounds: int) -> dict[str, float]:
    """Median seconds of one training step of each learner (see the module docstring)."""
    import torch

    from hesscale.experiments.learners import Learner
    from hesscale.experiments.networks import NETWORKS
    from hesscale.experiments.tasks import TASKS, TaskSettings

    torch.set_num_threads(1)
    steps = {}
    for log in logs:
        config = log["config"]
        task = TASKS.resolve(config["task"]).value(
            TaskSettings(config["task"], batch_size=config["batch_size"]),
            **config["task_options"],
        )
        torch.manual_seed(0)
        options = dict(config["network_options"])
        if config.get("hidden") is not None:
            options["hidden"] = tuple(config["hidden"])
        model = NETWORKS.resolve(config["network"]).value(
            tuple(task.input_shape), task.n_outputs, **options
        )
        learner = Learner(
            log["components"]["learner"], model.parameters(), **log["hyperparameters"]
        )
        model, loss_fn = learner.prepare(model, torch.nn.CrossEntropyLoss())
        x, y = task.next_batch()

        def step(model=model, loss_fn=loss_fn, learner=learner, x=x, y=y) -> None:
            output = model(x)
            learner.step(loss_fn(output, y), output)

        step()
        steps[log["learner"]] = step
    times: dict[str, list[float]] = defaultdict(list)
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.thread_time()
            steps[name]()
            times[name].append(time.thread_time() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def model_name(root: Path, log: dict[str, Any]) -> str:
    return root.name or log["config"]["network"]


def report(root: Path, out: Path, timing_rounds: int) -> str:
    """The markdown table of one sweep; writes its figures to ``out``."""
    runs = collect(root)
    if not runs:
        raise SystemExit(f"{root}: no complete run logs.")
    any_log = next(iter(next(iter(runs.values())).values()))[0]
    name = model_name(root, any_log)
    divisor, unit = _unit(any_log)
    learners = list(runs)
    seconds = {}
    if timing_rounds:
        seconds = step_seconds([runs[lr_logs][best_lr(runs[lr_logs])][0] for lr_logs in runs],
                               timing_rounds)  # fmt: skip
    grid = sorted({lr for by_lr in runs.values() for lr in by_lr})
    config = any_log["config"]
    lines = [
        f"### {name}: {config['network'].split(':')[-1]} on {config['task'].split(':')[-1]}, "
        f"{config['steps']} steps, batch {config['batch_size']}, "
        f"up to {len(any_log_seeds(runs))} seeds",
        "",
        f"| optimizer | seeds | best lr | final validation loss ({unit}) | diverged at | "
        "CPU s/step | " + " | ".join(f"lr {lr:g}" for lr in grid) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(grid),
    ]
    for learner in learners:
        by_lr = runs[learner]
        lr = best_lr(by_lr)
        mean, se = mean_se([final_loss(g) for g in by_lr[lr]])
        diverged = [
            f"{x:g}" for x in sorted(by_lr) if any(final_loss(g) == math.inf for g in by_lr[x])
        ]
        cells = []
        for x in grid:
            if x not in by_lr:
                cells.append("")
                continue
            m, _ = mean_se([final_loss(g) for g in by_lr[x]])
            cells.append("diverged" if m == math.inf else f"{m:.3f}")
        s = f"{seconds[learner]:.3f}" if learner in seconds else ""
        best = "all diverged" if mean == math.inf else f"{mean:.3f} +- {se:.3f}"
        lines.append(
            f"| {learner} | {len(by_lr[lr])} | {lr:g} | {best} | "
            f"{', '.join(diverged) or 'none'} | {s} | " + " | ".join(cells) + " |"
        )
    plot_curves(runs, seconds, divisor, unit, name, out / f"curves_{name}.png")
    plot_sensitivity(runs, unit, name, out / f"sensitivity_{name}.png")
    return "\n".join(lines) + "\n"


def any_log_seeds(runs: dict[str, dict[float, list[dict[str, Any]]]]) -> set[int]:
    return {g["seed"] for by_lr in runs.values() for logs in by_lr.values() for g in logs}


def _style(index: int) -> dict[str, Any]:
    return {"linestyle": ["-", "--", ":", "-."][index % 4], "marker": "osv^D<>p"[index % 8]}


def plot_curves(runs, seconds, divisor: float, unit: str, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_count = 2 if seconds else 1
    fig, axes = plt.subplots(1, axes_count, figsize=(6 * axes_count, 4.2), squeeze=False)
    for i, (learner, by_lr) in enumerate(runs.items()):
        lr = best_lr(by_lr)
        logs = [g for g in by_lr[lr] if g["status"] == "finished"]
        if not logs or len(logs) < len(by_lr[lr]):
            continue
        steps = np.array(logs[0]["test"]["steps"])
        values = np.array([g["test"]["loss"] for g in logs]) / divisor
        mean = values.mean(0)
        se = values.std(0, ddof=1) / math.sqrt(len(logs)) if len(logs) > 1 else 0 * mean
        xs = [steps] + ([steps * seconds[learner]] if learner in seconds else [])
        for ax, x in zip(axes[0], xs, strict=False):
            ax.plot(x, mean, label=f"{learner} (lr {lr:g})", **_style(i), markersize=4)
            ax.fill_between(x, mean - se, mean + se, alpha=0.2)
    axes[0][0].set_xlabel("steps")
    if seconds:
        axes[0][1].set_xlabel("seconds (steps x measured CPU s/step, 1 thread)")
    for ax in axes[0]:
        ax.set_ylabel(f"validation loss ({unit})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{name}: best step size per optimizer, mean +- s.e. over seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sensitivity(runs, unit: str, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    finite = [
        mean_se([final_loss(g) for g in logs])[0]
        for by_lr in runs.values()
        for logs in by_lr.values()
    ]
    finite = [v for v in finite if v < math.inf]
    ceiling = max(finite) * 1.05 if finite else 1.0
    for i, (learner, by_lr) in enumerate(runs.items()):
        lrs = sorted(by_lr)
        stats = [mean_se([final_loss(g) for g in by_lr[lr]]) for lr in lrs]
        means = [m if m < math.inf else ceiling for m, _ in stats]
        errors = [0 if m == math.inf or math.isnan(s) else s for m, s in stats]
        ax.errorbar(lrs, means, yerr=errors, label=learner, capsize=2, **_style(i))
        for lr, (m, _) in zip(lrs, stats, strict=True):
            if m == math.inf:
                ax.annotate("x", (lr, ceiling), ha="center", va="center", color="red")
    ax.set_xscale("log")
    ax.set_xlabel("step size (lr)")
    ax.set_ylabel(f"final validation loss ({unit}); x = diverged")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{name}: sensitivity to the step size")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hesscale.experiments.optimizer_report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", nargs="+", help="sweep output folders (results/optimizers_*)")
    parser.add_argument("--out", default="results/optimizers")
    parser.add_argument("--timing-rounds", type=int, default=20)
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds = 0 if args.no_timing else args.timing_rounds
    text = "\n".join(report(Path(root), out, rounds) for root in args.results)
    (out / "optimizers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
