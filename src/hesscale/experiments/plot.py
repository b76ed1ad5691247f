"""``hesscale plot RESULTS``: learning curves and step-size sensitivity from run logs (PNG).

RESULTS is a sweep's output folder (or any folder of run logs, searched recursively). Runs are
pooled as seeds of one curve only if all their settings agree (task, network, steps, batch
size, bins, ...; only the seed differs); for each such group it draws:

  curves_<task>_<network>.png       loss and accuracy over steps (online; and on the test
                                    split for runs with --eval-every), mean +- standard error
                                    over seeds, for each learner's best configuration
  sensitivity_<task>_<network>.png  average loss and accuracy vs. step size, per learner (for
                                    each step size its best setting of the other hyperparameters)

and writes summary.md (the table of best configurations). RL runs (tasks rl:...) get their
episodic returns over environment steps instead (returns_<task>_<network>.png, and their own
sensitivity plot and table: hesscale.experiments.rl.plot). Groups of the same task and network
with other settings (e.g. 200 and 50 steps) get plots of their own, named after the settings
that differ. Curves that coincide (e.g. AdaHesScale and AdaHesScaleGN on ReLU networks) are
drawn with distinct line styles and marked "identical to ..." in the legend.

"Best" is the lowest average loss over the run (mean of the binned losses, then mean over
seeds); a configuration with any diverged seed counts as diverged (average loss infinite) and
is never best.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hesscale.experiments.logs import (
    COMPLETE,
    config_label,
    config_name,
    format_value,
    iter_logs,
    safe_name,
)


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
        return f"{self.learner} ({config_label(self.hyperparameters)})"

    def same_results(self, other: Config) -> bool:
        """Whether ``other`` logged the same curves, seed by seed (e.g. two learners that
        coincide on this network)."""
        mine, theirs = _by_seed(self.logs), _by_seed(other.logs)
        if mine.keys() != theirs.keys():
            return False
        for seed, log in mine.items():
            for metric in ("loss", "accuracy"):
                a, b = np.asarray(log[metric], float), np.asarray(theirs[seed][metric], float)
                if a.shape != b.shape or not np.allclose(a, b, rtol=1e-9, atol=0, equal_nan=True):
                    return False
        return True


def _by_seed(logs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {log["seed"]: log for log in logs}


def stderr(values: np.ndarray) -> np.ndarray | float:
    """Standard error of the mean over axis 0 (0 for a single sample)."""
    n = values.shape[0]
    if n < 2:
        return np.zeros_like(values[0]) if values.ndim > 1 else 0.0
    return values.std(axis=0, ddof=1) / math.sqrt(n)


# settings of a run that are not the learner's: runs pool as seeds only if these agree
SETTINGS = (
    "steps",
    "batch_size",
    "change_freq",
    "bin_size",
    "eval_every",
    "hidden",
    "task_options",
    "network_options",
)
Group = tuple[str, str, str]  # task, network, settings (JSON)


def settings_of(log: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run besides task, network, learner, hyperparameters and seed."""
    config = log.get("config") or {"steps": log.get("steps"), "bin_size": log.get("bin_size")}
    settings = {key: config.get(key) for key in SETTINGS}
    for key in ("task_options", "network_options"):  # absent from logs made before they were
        settings[key] = settings[key] or {}
    return settings


def collect(root: str | Path) -> dict[Group, dict[str, list[Config]]]:
    """Complete runs under ``root``: {(task, network, settings): {learner: [Config, ...]}}.

    Raises ValueError if two logs are the same run (same settings, learner, configuration and
    seed): they would count twice as seeds."""
    grouped: dict[Group, dict[str, dict[str, Config]]] = defaultdict(dict)
    seen: dict[tuple, Path] = {}
    for path, log in iter_logs(root):
        if log["status"] not in COMPLETE:
            continue
        settings = json.dumps(settings_of(log), sort_keys=True)
        key = (log["task"]["name"], log["network"], settings)
        name = config_name(log["hyperparameters"])
        run = (*key, log["learner"], name, log["seed"])
        if run in seen:
            raise ValueError(
                f"{seen[run]} and {path} are the same run (seed {log['seed']}); remove one, or "
                "plot their folders separately."
            )
        seen[run] = path
        configs = grouped[key].setdefault(log["learner"], {})
        configs.setdefault(name, Config(log["learner"], log["hyperparameters"], [])).logs.append(
            log
        )
    return {k: {lr: list(c.values()) for lr, c in v.items()} for k, v in grouped.items()}


def distinguishing_settings(groups: list[Group]) -> dict[Group, dict[str, Any]]:
    """For each group, the settings that differ from another group of its task and network."""
    result = {}
    for task, network, settings in groups:
        siblings = [json.loads(s) for t, n, s in groups if (t, n) == (task, network)]
        mine = json.loads(settings)
        result[(task, network, settings)] = {
            k: v for k, v in mine.items() if any(other[k] != v for other in siblings)
        }
    return result


def _settings_text(settings: dict[str, Any], sep: str) -> str:
    return sep.join(f"{k}={format_value(v)}" for k, v in settings.items())


def best(configs: list[Config]) -> Config:
    return min(configs, key=Config.score)


def summary_rows(learners: dict[str, list[Config]]) -> list[dict[str, Any]]:
    rows = []
    for learner, configs in learners.items():
        top = best(configs)
        row: dict[str, Any] = {
            "learner": learner,
            "config": config_label(top.hyperparameters),
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


def summary_table(title: str, rows: list[dict[str, Any]]) -> str:
    def pm(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.4f} ± {pair[1]:.4f}"

    test = any("final_test_accuracy" in r for r in rows)
    lines = [
        f"### {title}",
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


LINE_STYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def _style(index: int, n_points: int, twin: str = "") -> dict[str, Any]:
    """Colour, line style and marker of the ``index``-th curve: no two curves look alike.
    ``twin``: "original" for a curve that a later one repeats (drawn wide and pale, so that the
    repeat, drawn thin on top, leaves it visible), "repeat" for that later curve."""
    return dict(
        color=f"C{index % 10}",
        linestyle=LINE_STYLES[index % len(LINE_STYLES)],
        marker=MARKERS[index % len(MARKERS)],
        markevery=max(1, n_points // 8),
        markersize={"original": 9, "repeat": 4}.get(twin, 5),
        linewidth={"original": 5, "repeat": 1.3}.get(twin, 1.8),
        alpha=0.45 if twin == "original" else 1.0,
    )


def _twin_role(name: str, twins: dict[str, str]) -> str:
    return "repeat" if name in twins else "original" if name in twins.values() else ""


def _plain_log_ticks(axis, at: list[float] | None = None) -> None:
    """Short tick labels on a log axis (0.001, 2, 1e-09; at most 3 significant digits), only at
    ``at`` if given; otherwise at the decades, and at the ticks between them only while the
    axis spans at most one decade (so that labels never pile up)."""
    from matplotlib import ticker

    def short(value: float, _=None) -> str:
        return f"{value:.3g}"

    def between_decades(value: float, _=None) -> str:
        low, high = sorted(axis.get_view_interval())
        return short(value) if low > 0 and high <= 10 * low else ""

    axis.set_major_formatter(ticker.FuncFormatter(short))
    if at is not None:
        axis.set_ticks(at)
        axis.set_minor_formatter(ticker.NullFormatter())
    else:
        axis.set_minor_formatter(ticker.FuncFormatter(between_decades))


def identical_to(curves: dict[str, Config | _Sweep]) -> dict[str, str]:
    """{name: an earlier name with the same results} among ``curves``."""
    names, found = list(curves), {}
    for i, name in enumerate(names):
        twin = next((n for n in names[:i] if curves[n].same_results(curves[name])), None)
        if twin is not None:
            found[name] = found.get(twin, twin)
    return found


def plot_curves(learners: dict[str, list[Config]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tops = {learner: best(learners[learner]) for learner in sorted(learners)}
    tops = {learner: top for learner, top in tops.items() if not top.diverged}
    twins = identical_to(tops)
    panels = [("loss", False), ("accuracy", False)]
    if any(top.has_test for top in tops.values()):
        panels += [("loss", True), ("accuracy", True)]
    rows = len(panels) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4 * rows), squeeze=False)
    for ax, (metric, test) in zip(axes.flat, panels, strict=True):
        for index, (learner, top) in enumerate(tops.items()):
            if test and not top.has_test:
                continue
            steps, mean, se = top.curve(metric, test)
            label = top.label()
            if learner in twins:
                label += f" - identical to {twins[learner]}"
            style = _style(index, len(steps), _twin_role(learner, twins))
            ax.plot(steps, mean, label=label, **style)
            ax.fill_between(steps, mean - se, mean + se, color=style["color"], alpha=0.15)
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
    by_learner: dict[str, dict[float, Config]] = {}
    for learner in sorted(learners):
        by_lr: dict[float, Config] = {}
        for config in learners[learner]:  # per step size, the best other hyperparameters
            lr = float(config.hyperparameters["lr"])
            if lr not in by_lr or config.score() < by_lr[lr].score():
                by_lr[lr] = config
        by_learner[learner] = by_lr
    twins = identical_to({learner: _Sweep(by_lr) for learner, by_lr in by_learner.items()})
    for index, (learner, by_lr) in enumerate(by_learner.items()):
        lrs = sorted(by_lr)
        label = learner + (f" - identical to {twins[learner]}" if learner in twins else "")
        style = _style(index, len(lrs), _twin_role(learner, twins))
        style["markevery"] = 1
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            ok = [lr for lr in lrs if not by_lr[lr].diverged]
            means = [by_lr[lr].per_seed(metric).mean() for lr in ok]
            errors = [stderr(by_lr[lr].per_seed(metric)) for lr in ok]
            ax.errorbar(ok, means, yerr=errors, capsize=3, label=label, **style)
            bad = [lr for lr in lrs if by_lr[lr].diverged]
            if bad:
                y = ceiling if metric == "loss" else 0.0
                ax.plot(bad, [y] * len(bad), "x", color=style["color"], markersize=9)
    axes[0].set_ylabel("average online loss (x: diverged)")
    axes[1].set_ylabel("average online accuracy (x: diverged)")
    axes[0].set_yscale("log")  # one bad seed can raise the average loss by orders of magnitude
    _plain_log_ticks(axes[0].yaxis)
    all_lrs = sorted({lr for by_lr in by_learner.values() for lr in by_lr})
    for ax in axes:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis, all_lrs if len(all_lrs) <= 8 else None)
        ax.set_xlabel("step size (lr)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: sensitivity to the step size (mean ± standard error over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _Sweep:
    """A learner's best configuration per step size, compared as a whole by ``identical_to``."""

    def __init__(self, by_lr: dict[float, Config]) -> None:
        self.by_lr = by_lr

    def same_results(self, other: _Sweep) -> bool:
        return self.by_lr.keys() == other.by_lr.keys() and all(
            c.same_results(other.by_lr[lr]) for lr, c in self.by_lr.items()
        )


def plot_all(root: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every plot for the logs under ``root``; return the files written."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir else root / "plots"
    groups = collect(root)
    if not groups:
        raise FileNotFoundError(f"No finished or diverged run logs under '{root}'.")
    out_dir.mkdir(parents=True, exist_ok=True)
    differing = distinguishing_settings(list(groups))
    written, tables = [], []
    for key, learners in sorted(groups.items()):
        task, network, _ = key
        tag, title = f"{task}_{network}", f"{task}, {network}"
        if differing[key]:
            tag += "__" + _settings_text(differing[key], "_").replace("=", "")
            title += f" ({_settings_text(differing[key], ', ')})"
        tag = safe_name(tag)  # labels may be import paths
        if task.startswith("rl:"):  # returns instead of losses: hesscale.experiments.rl.plot
            from hesscale.experiments.rl import plot as rl_plot

            files, table = rl_plot.plot_group(learners, title, out_dir, tag)
            written += files
            tables.append(table)
            continue
        plot_curves(learners, title, out_dir / f"curves_{tag}.png")
        plot_sensitivity(learners, title, out_dir / f"sensitivity_{tag}.png")
        written += [out_dir / f"curves_{tag}.png", out_dir / f"sensitivity_{tag}.png"]
        tables.append(summary_table(title, summary_rows(learners)))
    (out_dir / "summary.md").write_text("\n".join(tables))
    written.append(out_dir / "summary.md")
    return written


def configure(parser: argparse.ArgumentParser) -> None:
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
    except (FileNotFoundError, ValueError) as error:
        print(f"hesscale plot: {error}", file=sys.stderr)
        return 2
    print((written[-1]).read_text())
    for path in written:
        print(f"wrote {path}")
    return 0
