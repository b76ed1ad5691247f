"""The definition for fused kernels (attention, recurrent layers): torch records one node, whose
rule must equal the definition applied operation by operation to a decomposition into primitive
operations. The tests write that decomposition out and evaluate it with the graph oracle, given
a diagonal h and a gradient g for each output of the fused operation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from tests.engine_oracle import GraphOracle


def _as_list(out) -> list[Tensor]:
    return list(out) if isinstance(out, list | tuple) else [out]


def decomposition_diagonals(
    decomposition: Callable[..., Tensor | tuple],
    inputs: Sequence[Tensor],
    h_outs: Sequence[Tensor],
    g_outs: Sequence[Tensor],
    second_order: bool = True,
) -> list[Tensor]:
    """The diagonal each input receives when the outputs of ``decomposition(*inputs)`` receive
    the diagonals ``h_outs`` and gradients ``g_outs`` (HesScaleGN below them when not
    ``second_order``), by the graph oracle (float64, dense per-operation Jacobians).

    The outputs o receive them from the loss sum(g o) + sum(h (o - o*)^2) / 2 with o* the value
    of o: at o = o* its gradient is g and (h = 0, g = 1 at the loss) the square sends h."""
    inputs = [t.detach() for t in inputs]
    values = [o.detach() for o in _as_list(decomposition(*inputs))]

    def fn(*xs):
        outs = _as_list(decomposition(*xs))
        loss = sum(
            (g * o).sum() + 0.5 * (h * (o - value).square()).sum()
            for o, h, g, value in zip(outs, h_outs, g_outs, values, strict=True)
        )
        return (loss,) if second_order else (loss, *outs)

    diagonals, _ = GraphOracle(fn, inputs).diagonals(gn=not second_order)
    return diagonals
