"""The rule of a fused node defined as the engine itself applied to the node's decomposition.

Some fused kernels (cuDNN's multi-layer RNN) compute what a whole chain of primitive operations
computes. Their definition is the HesScale definition applied to that chain, operation by
operation, and the engine already has a rule for each of those operations; so the fused node's
rule recomputes the chain from the node's saved tensors (``decomposition``) and runs the engine
over it, seeding each output o with the node's diagonal h and gradient g through the loss

    sum(g * o) + sum(h * (o - o*)^2) / 2,        o* the value of o,

whose gradient at o is g and whose own curvature sends h to o (the loss starts with h = 0,
g = 1). HesScaleGN (``second_order`` False) names the outputs as the network output, so that no
operation of the chain adds its curvature. One formula per operation, in one place: the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hesscale.engine.backward import DiagonalBackward


def decomposition_diagonals(
    decomposition: Callable[..., Sequence[Tensor | None]],
    inputs: Sequence[Tensor | None],
    needs: Sequence[bool],
    h_out: Sequence[Tensor | None],
    g_out: Sequence[Tensor | None],
    second_order: bool,
) -> list[Tensor | None]:
    """The diagonal each input of ``decomposition(*inputs)`` receives (None where not
    ``needs[i]``) when its outputs receive ``h_out`` and ``g_out`` (None: zero)."""
    if all(h is None for h in h_out) and (not second_order or all(g is None for g in g_out)):
        return [None] * len(inputs)
    leaves = [
        None if t is None else t.detach().requires_grad_(bool(need))
        for t, need in zip(inputs, needs, strict=True)
    ]
    device = next(t for t in leaves if t is not None).device.type
    with torch.enable_grad(), torch.autocast(device, enabled=False):
        outputs = decomposition(*leaves)
        terms, seeded = [], []
        for o, h, g in zip(outputs, h_out, g_out, strict=False):
            if o is None or (h is None and g is None):
                continue
            seeded.append(o)
            if g is not None:
                terms.append((g.to(o.dtype) * o).sum())
            if h is not None:
                terms.append(0.5 * (h.to(o.dtype) * (o - o.detach()).square()).sum())
        loss = torch.stack(terms).sum()
    variant = "hesscale" if second_order else "hesscale_gn"
    differentiated = [t for t in leaves if t is not None and t.requires_grad]
    DiagonalBackward(loss, (variant,), None if second_order else seeded).run(
        differentiated, None, across_ranks=False
    )
    return [None if t is None or not t.requires_grad else getattr(t, variant, None) for t in leaves]
