"""How the experiments' plots draw curves: one look per curve, repeats visible, plain tick
labels on log axes. Shared by the supervised plots (``plot``) and the RL plots (``rl.plot``)."""

from __future__ import annotations

from typing import Any

LINE_STYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def line_style(index: int, n_points: int, twin: str = "") -> dict[str, Any]:
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


def twin_role(name: str, twins: dict[str, str]) -> str:
    """'repeat' for a curve that repeats an earlier one (``twins``: repeat -> original, as
    ``plot.identical_to`` finds them), 'original' for a curve repeated later, else ''."""
    return "repeat" if name in twins else "original" if name in twins.values() else ""


def plain_log_ticks(axis, at: list[float] | None = None) -> None:
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
