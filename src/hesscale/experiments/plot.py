"""``hesscale plot RESULTS``: learning curves and step-size sensitivity from run logs (PNG).

RESULTS is a sweep's output folder (or any folder of run logs, searched recursively). For each
task x network it draws:

  curves_<task>_<network>.png       loss and accuracy over steps (online; and on the test
                                    split for runs with --eval-every), mean +- standard error
                                    over seeds, for each learner's best configuration
  sensitivity_<task>_<network>.png  average loss and accuracy vs. step size, per learner (for
                                    each step size its best setting of the other hyperparameters)

and writes summary.md (the table of best configurations). "Best" is the lowest average loss
over the run (mean of the binned losses, then mean over seeds); a configuration with any
diverged seed counts as diverged (average loss infinite) and is never best.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hesscale.experiments.logs import COMPLETE, config_name, iter_logs


@dataclass
class Config:
    """All seeds of one learner configuration."""

    learner: str
    hyperparameters: dict[str, Any]
    logs: list[dict[str, Any]]

    @property
    def diverged(self) -> bool:
        return any(log["status"] == "diverged" for log in self.logs)

    def per_seed(self, metric: str) -> np.ndarray:
        """Average of ``metric`` over each run (inf loss / 0 accuracy for a diverged run)."""
        values = []
        for log in self.logs:
            if log["status"] == "diverged":
                values.append(math.inf if metric == "loss" else 0.0)
            else:
                values.append(float(np.mean(log[metric])))
        return np.array(values)

    def score(self) -> float:
        return float(np.mean(self.per_seed("loss")))

    @property
    def has_test(self) -> bool:
        return all(log.get("test", {}).get("steps") for log in self.logs)

    def curve(self, metric: str, test: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steps, mean and standard error over seeds of the binned (or test-split) ``metric``."""
        series = [log["test"] if test else log for log in self.logs]
        steps = "steps" if test else "bin_ends"
        n = min(len(s[metric]) for s in series)
        values = np.array([s[metric][:n] for s in series], dtype=float)
        return np.array(series[0][steps][:n]), values.mean(0), stderr(values)

    def label(self) -> str:
        return f"{self.learner} ({config_name(self.hyperparameters).replace('__', ', ')})"


def stderr(values: np.ndarray) -> np.ndarray | float:
    """Standard error of the mean over axis 0 (0 for a single sample)."""
    n = values.shape[0]
    if n < 2:
        return np.zeros_like(values[0]) if values.ndim > 1 else 0.0
    return values.std(axis=0, ddof=1) / math.sqrt(n)


def collect(root: str | Path) -> dict[tuple[str, str], dict[str, list[Config]]]:
    """Complete runs under ``root``: {(task, network): {learner: [Config, ...]}}."""
    grouped: dict[tuple[str, str], dict[str, dict[str, Config]]] = defaultdict(dict)
    for _, log in iter_logs(root):
        if log["status"] not in COMPLETE:
            continue
        key = (log["task"]["name"], log["network"])
        name = config_name(log["hyperparameters"])
        configs = grouped[key].setdefault(log["learner"], {})
        configs.setdefault(name, Config(log["learner"], log["hyperparameters"], [])).logs.append(
            log
        )
    return {k: {lr: list(c.values()) for lr, c in v.items()} for k, v in grouped.items()}


def best(configs: list[Config]) -> Config:
    return min(configs, key=Config.score)


def summary_rows(learners: dict[str, list[Config]]) -> list[dict[str, Any]]:
    rows = []
    for learner, configs in learners.items():
        top = best(configs)
        row: dict[str, Any] = {
            "learner": learner,
            "config": config_name(top.hyperparameters),
            "seeds": len(top.logs),
            "diverged_configs": sum(c.diverged for c in configs),
            "configs": len(configs),
        }
        for metric in ("loss", "accuracy"):
            values = top.per_seed(metric)
            row[f"avg_{metric}"] = (float(values.mean()), float(stderr(values)))
            final = np.array([log[metric][-1] if log[metric] else math.nan for log in top.logs])
            row[f"final_{metric}"] = (float(final.mean()), float(stderr(final)))
        if top.has_test:
            final = np.array([log["test"]["accuracy"][-1] for log in top.logs])
            row["final_test_accuracy"] = (float(final.mean()), float(stderr(final)))
        rows.append(row)
    return rows


def summary_table(task: str, network: str, rows: list[dict[str, Any]]) -> str:
    def pm(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.4f} ± {pair[1]:.4f}"

    test = any("final_test_accuracy" in r for r in rows)
    lines = [
        f"### {task}, {network}",
        "",
        "| learner | best config | avg loss | avg accuracy | final accuracy "
        + ("| final test accuracy " if test else "")
        + "| seeds | diverged configs |",
        "|---|---|---|---|---|---|---|" + ("---|" if test else ""),
    ]
    for r in sorted(rows, key=lambda r: r["avg_loss"][0]):
        test_cell = ""
        if test:
            test_cell = f"| {pm(r['final_test_accuracy'])} " if "final_test_accuracy" in r else "| "
        lines.append(
            f"| {r['learner']} | {r['config']} | {pm(r['avg_loss'])} | {pm(r['avg_accuracy'])} "
            f"| {pm(r['final_accuracy'])} {test_cell}| {r['seeds']} "
            f"| {r['diverged_configs']}/{r['configs']} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(learners: dict[str, list[Config]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tops = [best(learners[learner]) for learner in sorted(learners)]
    tops = [top for top in tops if not top.diverged]
    panels = [("loss", False), ("accuracy", False)]
    if any(top.has_test for top in tops):
        panels += [("loss", True), ("accuracy", True)]
    rows = len(panels) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4 * rows), squeeze=False)
    for ax, (metric, test) in zip(axes.flat, panels, strict=True):
        for color, top in enumerate(tops):
            if test and not top.has_test:
                continue
            steps, mean, se = top.curve(metric, test)
            marker = "o" if len(steps) == 1 else None
            ax.plot(steps, mean, color=f"C{color}", marker=marker, label=top.label())
            ax.fill_between(steps, mean - se, mean + se, color=f"C{color}", alpha=0.25)
        ax.set_xlabel("step")
        ax.set_ylabel(("test " if test else "online ") + metric)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{title}: best configuration per learner (mean ± standard error over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sensitivity(learners: dict[str, list[Config]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    finite = [c.score() for cs in learners.values() for c in cs if not c.diverged]
    ceiling = max(finite) * 2 if finite else 1.0  # where diverged step sizes are marked
    for learner in sorted(learners):
        by_lr: dict[float, Config] = {}
        for config in learners[learner]:  # per step size, the best other hyperparameters
            lr = float(config.hyperparameters["lr"])
            if lr not in by_lr or config.score() < by_lr[lr].score():
                by_lr[lr] = config
        lrs = sorted(by_lr)
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            ok = [lr for lr in lrs if not by_lr[lr].diverged]
            means = [by_lr[lr].per_seed(metric).mean() for lr in ok]
            errors = [stderr(by_lr[lr].per_seed(metric)) for lr in ok]
            line = ax.errorbar(ok, means, yerr=errors, marker="o", capsize=3, label=learner)
            bad = [lr for lr in lrs if by_lr[lr].diverged]
            if bad:
                y = ceiling if metric == "loss" else 0.0
                color = line.lines[0].get_color()
                ax.plot(bad, [y] * len(bad), "x", color=color, markersize=9)
    axes[0].set_ylabel("average online loss (x: diverged)")
    axes[1].set_ylabel("average online accuracy (x: diverged)")
    axes[0].set_yscale("log")  # one bad seed can raise the average loss by orders of magnitude
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("step size (lr)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: sensitivity to the step size (mean ± standard error over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_all(root: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every plot for the logs under ``root``; return the files written."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir else root / "plots"
    groups = collect(root)
    if not groups:
        raise FileNotFoundError(f"No finished or diverged run logs under '{root}'.")
    out_dir.mkdir(parents=True, exist_ok=True)
    written, tables = [], []
    for (task, network), learners in sorted(groups.items()):
        tag = f"{task}_{network}"
        title = f"{task}, {network}"
        plot_curves(learners, title, out_dir / f"curves_{tag}.png")
        plot_sensitivity(learners, title, out_dir / f"sensitivity_{tag}.png")
        written += [out_dir / f"curves_{tag}.png", out_dir / f"sensitivity_{tag}.png"]
        tables.append(summary_table(task, network, summary_rows(learners)))
    (out_dir / "summary.md").write_text("\n".join(tables))
    written.append(out_dir / "summary.md")
    return written


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split("\n", 1)[1]
    parser.add_argument(
        "results", help="a sweep's output folder (or its spec's name), or any folder of run logs"
    )
    parser.add_argument("--out", default=None, help="where to write (default: RESULTS/plots)")


def main(args: argparse.Namespace) -> int:
    results = Path(args.results)
    if not results.exists() and (Path("results") / args.results).is_dir():
        results = Path("results") / args.results  # a spec's name: its default output folder
    try:
        written = plot_all(results, args.out)
    except FileNotFoundError as error:
        print(f"hesscale plot: {error}", file=sys.stderr)
        return 2
    print((written[-1]).read_text())
    for path in written:
        print(f"wrote {path}")
    return 0
