"""One optimizer step on an RL loss, for any learner, with the backward pass it needs
(hesscale.experiments.learners.Learner.backward):

- AdaHesScale / AdaHesScaleGN: ``hesscale.backward(loss)`` on the loss exactly as written
  (HesScaleGN: ``gn=True, output=(mean, log_std, value)``, the network's outputs, since an RL
  loss is not one of the loss functions HesScaleGN recognises by itself);
- AdaHessian: gradients with their graph, for its Hessian-vector products;
- first-order optimizers (SGD, Adam, any torch.optim optimizer): ``loss.backward()``.

Learners that run BackPACK (AdaGGNMC) need a BackPACK-extended loss function, which an RL loss
written in plain torch is not (``check_learner``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hesscale.experiments.learners import Learner


def check_learner(learner: Learner, max_grad_norm: float | None) -> None:
    """Raise ValueError if ``learner`` cannot optimise an RL loss (with gradient clipping)."""
    if learner.uses_backpack:
        raise ValueError(
            f"Learner '{learner.name}' runs BackPACK, which needs an extended loss function; an "
            "RL loss is written in plain torch. Use adahesscale or adahesscalegn (any loss, "
            "through hesscale.backward), adahessian, adam or sgd."
        )
    if max_grad_norm is not None and learner.backward_pass == "create_graph":
        raise ValueError(
            f"Learner '{learner.name}' differentiates its gradients again (Hessian-vector "
            "products), so they cannot be clipped: leave out max_grad_norm."
        )


def update(
    learner: Learner,
    loss: Tensor,
    outputs: Sequence[Tensor],
    max_grad_norm: float | None = None,
) -> None:
    """One step of ``learner`` on ``loss``; ``outputs`` are the network outputs the loss was
    computed from (for HesScaleGN); the gradient's norm is clipped to ``max_grad_norm`` first
    if given (its diagonal is not: clipping rescales the step, not the loss's curvature)."""
    if max_grad_norm is None:
        learner.step(loss, list(outputs))
        return
    optimizer = learner.optimizer
    optimizer.zero_grad(set_to_none=True)
    learner.backward(loss, list(outputs))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
