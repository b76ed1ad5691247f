"""``hesscale plot`` for RL runs: return curves over environment steps, step-size sensitivity
and the summary table, per task, network and algorithm settings.

- average return of a run: the mean of its binned returns (each bin: the mean return of the
  episodes that ended in it), i.e. the area under its learning curve;
- final return of a run: the mean of its last 10% of bins (at least one);
- per configuration, both are averaged over seeds and shown with the standard error over
  seeds; the best configuration of a learner has the highest average return. A configuration
  with a diverged seed counts as diverged (average return -inf) and is never best.

Curves: the mean over seeds, shaded +- one standard error, each seed as a thin line; a bin in
which no episode ended repeats the previous one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hesscale.experiments.logs import config_label
from hesscale.experiments.plot import Config, identical_to, stderr
from hesscale.experiments.plot_style import line_style, plain_log_ticks, twin_role

FINAL_FRACTION = 0.1


def env_steps(log: dict[str, Any]) -> np.ndarray:
    return np.asarray(log["bin_ends"], dtype=float) * log["env_steps_per_step"]


def filled_returns(log: dict[str, Any]) -> np.ndarray:
    """The binned returns, a bin without finished episodes repeating the previous value."""
    values = np.array([math.nan if r is None else r for r in log["return"]], dtype=float)
    for i in range(1, len(values)):
        if math.isnan(values[i]):
            values[i] = values[i - 1]
    return values


class RLConfig(Config):
    """All seeds of one learner configuration of an RL run."""

    def per_seed(self, metric: str = "return") -> np.ndarray:
        """Average return of each run (-inf for a diverged run)."""
        return np.array(
            [
                -math.inf if log["status"] == "diverged" else float(np.nanmean(filled_returns(log)))
                for log in self.logs
            ]
        )

    def final_per_seed(self) -> np.ndarray:
        finals = []
        for log in self.logs:
            values = filled_returns(log)
            n = max(1, math.ceil(FINAL_FRACTION * len(values)))
            finals.append(-math.inf if log["status"] == "diverged" else np.nanmean(values[-n:]))
        return np.array(finals, dtype=float)

    def score(self) -> float:
        """Lower is better (as for the supervised runs): minus the average return."""
        return -float(np.mean(self.per_seed()))

    def seeds_curves(self) -> tuple[np.ndarray, np.ndarray]:
        """Environment steps and the (filled) binned returns of each seed, cut to the
        shortest."""
        n = min(len(log["return"]) for log in self.logs)
        return env_steps(self.logs[0])[:n], np.array([filled_returns(lg)[:n] for lg in self.logs])

    def same_results(self, other: Config) -> bool:
        mine = {log["seed"]: log for log in self.logs}
        theirs = {log["seed"]: log for log in other.logs}
        return mine.keys() == theirs.keys() and all(
            np.array_equal(filled_returns(mine[s]), filled_returns(theirs[s]), equal_nan=True)
            for s in mine
        )


def best(configs: list[RLConfig]) -> RLConfig:
    """The configuration with the highest average return."""
    return min(configs, key=lambda config: config.score())


def as_rl(learners: dict[str, list[Config]]) -> dict[str, list[RLConfig]]:
    return {
        learner: [RLConfig(c.learner, c.hyperparameters, c.logs) for c in configs]
        for learner, configs in learners.items()
    }


def summary_rows(learners: dict[str, list[RLConfig]]) -> list[dict[str, Any]]:
    rows = []
    for learner, configs in learners.items():
        top = best(configs)
        average, final = top.per_seed(), top.final_per_seed()
        rows.append(
            {
                "learner": learner,
                "config": config_label(top.hyperparameters),
                "avg_return": (float(average.mean()), float(stderr(average))),
                "final_return": (float(final.mean()), float(stderr(final))),
                "seeds": len(top.logs),
                "diverged_configs": sum(c.diverged for c in configs),
                "configs": len(configs),
            }
        )
    return rows


def summary_table(title: str, rows: list[dict[str, Any]]) -> str:
    def pm(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.1f} ± {pair[1]:.1f}"

    lines = [
        f"### {title}",
        "",
        "| learner | best config | average return | final return | seeds | diverged configs |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["avg_return"][0]):
        lines.append(
            f"| {r['learner']} | {r['config']} | {pm(r['avg_return'])} | {pm(r['final_return'])} "
            f"| {r['seeds']} | {r['diverged_configs']}/{r['configs']} |"
        )
    lines += [
        "",
        "Mean ± standard error over seeds; average: over the whole run, final: its last "
        f"{FINAL_FRACTION:.0%} of environment steps.",
    ]
    return "\n".join(lines) + "\n"


def plot_curves(learners: dict[str, list[RLConfig]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tops = {learner: best(learners[learner]) for learner in sorted(learners)}
    tops = {learner: top for learner, top in tops.items() if not top.diverged}
    twins = identical_to(tops)
    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (learner, top) in enumerate(tops.items()):
        steps, runs = top.seeds_curves()
        mean, se = runs.mean(0), stderr(runs)
        label = top.label() + (f" - identical to {twins[learner]}" if learner in twins else "")
        style = line_style(index, len(steps), twin_role(learner, twins))
        ax.plot(steps, mean, label=f"{label}, {len(runs)} seeds", **style)
        ax.fill_between(steps, mean - se, mean + se, color=style["color"], alpha=0.2)
        for run in runs:
            ax.plot(steps, run, color=style["color"], linewidth=0.6, alpha=0.35)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episodic return (training episodes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        f"{title}\nbest step size per learner: mean ± standard error over seeds (thin: seeds)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sensitivity(learners: dict[str, list[RLConfig]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = [-c.score() for cs in learners.values() for c in cs if not c.diverged]
    floor = min(finite) - 0.1 * (abs(min(finite)) + 1) if finite else 0.0  # diverged marks
    all_lrs: set[float] = set()
    for index, learner in enumerate(sorted(learners)):
        by_lr: dict[float, RLConfig] = {}
        for config in learners[learner]:
            lr = float(config.hyperparameters["lr"])
            if lr not in by_lr or config.score() < by_lr[lr].score():
                by_lr[lr] = config
        lrs = sorted(by_lr)
        all_lrs.update(lrs)
        style = {**line_style(index, len(lrs)), "markevery": 1}
        ok = [lr for lr in lrs if not by_lr[lr].diverged]
        means = [by_lr[lr].per_seed().mean() for lr in ok]
        errors = [stderr(by_lr[lr].per_seed()) for lr in ok]
        ax.errorbar(ok, means, yerr=errors, capsize=3, label=learner, **style)
        bad = [lr for lr in lrs if by_lr[lr].diverged]
        if bad:
            ax.plot(bad, [floor] * len(bad), "x", color=style["color"], markersize=9)
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis, sorted(all_lrs) if len(all_lrs) <= 8 else None)
    ax.set_xlabel("step size (lr)")
    ax.set_ylabel("average return (x: diverged)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}\nsensitivity to the step size (mean ± standard error over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_group(
    learners: dict[str, list[Config]], title: str, out_dir: Path, tag: str
) -> tuple[list[Path], str]:
    """Draw one RL group's plots; returns the files and its summary table."""
    rl = as_rl(learners)
    curves, sensitivity = out_dir / f"returns_{tag}.png", out_dir / f"sensitivity_{tag}.png"
    plot_curves(rl, title, curves)
    plot_sensitivity(rl, title, sensitivity)
    return [curves, sensitivity], summary_table(title, summary_rows(rl))
