"""One optimizer step on an RL loss, for any learner: the backward pass each one needs.

- AdaHesScale / AdaHesScaleGN: ``hesscale.backward(loss)`` on the loss exactly as written
  (HesScaleGN: ``gn=True, output=(mean, log_std, value)``, the network's outputs, since an RL
  loss is not one of the loss functions HesScaleGN recognises by itself);
- AdaHessian: the optimizer differentiates the loss itself (``step(closure)``);
- first-order optimizers (SGD, Adam, ...): ``loss.backward()``.

Learners that need BackPACK-extended modules and loss functions (AdaGGNMC) cannot serve a loss
written in plain torch (``check_learner``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import hesscale
from hesscale.experiments.learners import Learner
from hesscale.optim import AdaHesScale


def check_learner(learner: Learner, max_grad_norm: float | None) -> None:
    """Raise ValueError if ``learner`` cannot optimise an RL loss (with gradient clipping)."""
    if learner.uses_backpack and not isinstance(learner.optimizer, AdaHesScale):
        raise ValueError(
            f"Learner '{learner.name}' needs BackPACK-extended modules and loss functions, which "
            "an RL loss written in plain torch is not. Use adahesscale or adahesscalegn (any "
            "loss, through hesscale.backward), adahessian, adam or sgd."
        )
    if max_grad_norm is not None and learner.create_graph:
        raise ValueError(
            f"Learner '{learner.name}' differentiates the loss inside its step, so its gradient "
            "cannot be clipped: leave out max_grad_norm."
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
    optimizer = learner.optimizer
    if learner.create_graph:
        optimizer.step(lambda: loss)
        return
    optimizer.zero_grad()
    if isinstance(optimizer, AdaHesScale):
        hesscale.backward(loss, gn=optimizer.gn, output=list(outputs) if optimizer.gn else None)
    else:
        loss.backward()
    if max_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
