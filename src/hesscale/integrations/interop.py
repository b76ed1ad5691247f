"""The diagonal in the form optimizers that accept a Hessian expect
(``pip install hesscale[interop]``).

pytorch_optimizer's SophiaH and AdaHessian estimate the Hessian diagonal themselves
(Hutchinson's estimator, with ``create_graph=True``), or take it given: ``step(hessian=...)``,
a list with one tensor per parameter, in the order of its param groups::

    opt = pytorch_optimizer.SophiaH(model.parameters(), lr=1e-3)
    opt.zero_grad()
    hesscale.backward(loss_fn(model(x), y), gn=True)
    opt.step(hessian=hessian_list(opt, "hesscale_gn"))
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesscale.errors import HesScaleError

__all__ = ["hessian_list"]


def hessian_list(optimizer: torch.optim.Optimizer, diagonal: str = "hesscale") -> list[Tensor]:
    """``p.<diagonal>`` of every parameter of ``optimizer``, in the order of its param groups
    (that of its ``step(hessian=...)``); zeros for a parameter without a gradient (the step
    skips it), an error naming a parameter that has a gradient but no diagonal."""
    if diagonal not in ("hesscale", "hesscale_gn"):
        raise ValueError(f"hessian_list: diagonal={diagonal!r}; use 'hesscale' or 'hesscale_gn'.")
    result = []
    for g, group in enumerate(optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            if p.grad is None:
                result.append(torch.zeros_like(p))
                continue
            h = getattr(p, diagonal, None)
            if h is None:
                gn = ", gn=True" if diagonal == "hesscale_gn" else ""
                raise HesScaleError(
                    f"hessian_list: parameter {i} of param group {g} (shape {tuple(p.shape)}) "
                    f"has a gradient but no p.{diagonal}; run hesscale.backward(loss{gn})."
                )
            result.append(h)
    return result
