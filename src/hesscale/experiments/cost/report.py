"""The cost study's outputs: a table, cost.csv / cost.json / cost.txt and cost.png."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from hesscale.experiments.cost.measure import Result
from hesscale.experiments.cost.methods import REFERENCE
from hesscale.experiments.cost.models import MODELS


def format_table(results: list[Result]) -> str:
    """One block per configuration: method, median step time, ratios, spread."""
    lines: list[str] = []
    configs: dict[str, list[Result]] = {}
    for result in results:
        c = result.config
        key = (
            f"{c.model} width={c.width} depth={c.depth} batch={c.batch} "
            f"{c.device} threads={c.threads} {c.dtype} clock={c.clock}"
        )
        configs.setdefault(key, []).append(result)
    for key, block in configs.items():
        lines += [
            key,
            f"  {'method':<22} {'ms':>9} {'time x':>7} {'IQR/med':>8} {'peak MB':>9} {'mem x':>6}",
        ]
        for r in block:
            if r.status != "ok":
                lines.append(f"  {r.method:<22} {r.status}")
                continue
            lines.append(
                f"  {r.method:<22} {r.median_ms:9.2f} {r.time_ratio:7.2f} {r.spread:8.2f} "
                f"{r.peak_mb:9.1f} {r.memory_ratio:6.2f}"
            )
        lines.append("")
    return "\n".join(lines)


def write_outputs(results: list[Result], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in results]
    paths = [out / "cost.csv", out / "cost.json", out / "cost.txt"]
    with open(paths[0], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    detailed = [{**r.row(), "times_ms": r.times_ms} for r in results]
    paths[1].write_text(json.dumps(_jsonable(detailed), indent=1))
    paths[2].write_text(format_table(results))
    paths.append(plot(results, out / "cost.png"))
    return paths


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


# HesScale's own methods in strong colors (curvature solid, optimizer steps dotted); the
# reference black; every other method muted, told apart by its marker.
HIGHLIGHT = {
    "HesScale": "#d62728",
    "HesScaleGN": "#1f4fd0",
    "HesScale (BackPACK)": "#f2a0a0",
    "HesScaleGN (BackPACK)": "#a0b4f0",
    "AdaHesScale": "#d62728",
    "AdaHesScaleGN": "#1f4fd0",
}
MUTED = ["#9a9a9a", "#b59a6a", "#8fa8c0", "#a99cc4", "#8fbf9f", "#c79a95", "#b8b86a", "#7f7f7f"]
MARKERS = ["s", "^", "v", "D", "P", "X", "<", ">", "*", "h"]
OUTLIER_RATIO = 10.0  # methods above this ratio get their own panel, not to squash the rest
METRICS = (("time", "time_ratio"), ("peak memory", "memory_ratio"))


def line_style(method: str, group: str, index: int) -> dict:
    """How ``method`` is drawn: HesScale's methods strong, the others muted."""
    linestyle = ":" if group == "optimizer step" else "-"
    if method == REFERENCE:
        return dict(color="black", linestyle="--", linewidth=1.2, marker="o", zorder=4)
    if method in HIGHLIGHT:
        # the Gauss-Newton variant thinner and on top: where the two coincide both show
        gn = method.endswith("GN")
        return dict(
            color=HIGHLIGHT[method],
            linestyle=linestyle,
            linewidth=1.6 if gn else 3.4,
            marker="o" if group != "optimizer step" else "D",
            markersize=4.5 if gn else 8,
            zorder=6 if gn else 5,
        )
    return dict(
        color=MUTED[index % len(MUTED)],
        linestyle=linestyle,
        linewidth=1.1,
        marker=MARKERS[index % len(MARKERS)],
        markersize=4,
        alpha=0.85,
        zorder=2,
    )


def describe_setting(results: list[Result]) -> str:
    """Model, batch, threads, clock, device and precision of ``results``, for a title."""
    c = results[0].config
    activation = c.activation or MODELS[c.model].activation
    depths = sorted({r.config.depth for r in results})
    if c.model == "mlp":
        hidden = " / ".join(f"{d} x width" for d in depths)
        model = f"MLP 784 - {hidden} - 10, {activation}"
    else:
        model = f"3c3d CNN ({' / '.join(map(str, depths))} conv) on 3x32x32, {activation}"
    threads = "/".join(str(t) for t in sorted({r.config.threads for r in results}))
    return f"{model}; batch {c.batch}; {threads} thread(s); {c.clock} clock; {c.device}, {c.dtype}"


def outlier_methods(results: list[Result], ratio: str) -> set[str]:
    """Methods whose ``ratio`` ("time_ratio" or "memory_ratio") exceeds OUTLIER_RATIO."""
    return {
        r.method
        for r in results
        if math.isfinite(getattr(r, ratio)) and getattr(r, ratio) > OUTLIER_RATIO
    }


def plot(results: list[Result], path: Path) -> Path:
    """Time and memory ratio vs. width, one line per method; one column per (depth, threads).

    Methods whose ratio exceeds OUTLIER_RATIO (e.g. DiagHessian at 100x) are drawn in a panel
    of their own beside the others, so that the rest keep a readable scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r.config.depth, r.config.threads) for r in results})
    methods = list(dict.fromkeys(r.method for r in results))
    groups = {r.method: r.group for r in results}
    muted = [m for m in methods if m != REFERENCE and m not in HIGHLIGHT]
    styles = {m: line_style(m, groups[m], muted.index(m) if m in muted else 0) for m in methods}
    outliers = {ratio: outlier_methods(results, ratio) for _, ratio in METRICS}
    split = any(outliers.values())
    ratios = [3, 1.2] * len(panels) if split else [1] * len(panels)
    fig, axes = plt.subplots(
        2,
        len(ratios),
        figsize=(sum(ratios) * (2.0 if split else 5.5) + 2.5, 7.5),
        squeeze=False,
        gridspec_kw={"width_ratios": ratios},
    )
    drawn: dict[str, object] = {}
    for p, (depth, threads) in enumerate(panels):
        for row, (what, ratio) in enumerate(METRICS):
            main = axes[row, 2 * p if split else p]
            side = axes[row, 2 * p + 1] if split else None
            for method in methods:
                points = sorted(
                    (r.config.width, getattr(r, ratio))
                    for r in results
                    if r.method == method
                    and (r.config.depth, r.config.threads) == (depth, threads)
                    and math.isfinite(getattr(r, ratio))
                )
                if not points:
                    continue
                ax = side if method in outliers[ratio] else main
                (line,) = ax.plot(*zip(*points, strict=True), label=method, **styles[method])
                drawn.setdefault(method, line)
            title = f"{what}, depth {depth}, {threads} thread(s)"
            _format_axes(main, results, what, title)
            if side is not None:
                _format_axes(side, results, what, f"methods above {OUTLIER_RATIO:g}x")
                side.set_ylabel("")
    fig.suptitle(
        f"Cost of one step / plain forward+backward (medians)\n{describe_setting(results)}",
        fontsize=11,
    )
    legend_order = [m for m in methods if m in drawn]
    fig.legend(
        [drawn[m] for m in legend_order],
        legend_order,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=8,
        title="solid: backward pass\ndotted: optimizer step",
        title_fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _format_axes(ax, results: list[Result], what: str, title: str) -> None:
    from matplotlib import ticker

    if ax.lines:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({r.config.width for r in results}))
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    else:
        ax.text(0.5, 0.5, "nothing here", ha="center", transform=ax.transAxes, color="grey")
    ax.set_xlabel("width")
    ax.set_ylabel(f"{what} / forward+backward")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
