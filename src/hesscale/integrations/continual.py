"""Elastic weight consolidation (Kirkpatrick et al., 2017) with HesScaleGN importances.

After a task, EWC anchors the weights at their values theta* and weighs each by its
importance F, the diagonal of the Fisher information, which for the usual likelihoods is the
Gauss-Newton matrix: here the data set's HesScaleGN diagonal (``hesscale.diagonal``), exact per
example rather than the square of a mini-batch's mean gradient. Training on later tasks adds
the penalty strength / 2 * sum_i F_i (theta_i - theta*_i)^2 to the loss. Over several tasks
the importances accumulate (online EWC): F <- decay * F + F_new, with the anchor at the latest
weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from hesscale.integrations.dataset import diagonal

__all__ = ["EWC"]


class EWC:
    """The EWC penalty of a model::

        ewc = EWC(model, strength=100.0)
        ...train on task A...
        ewc.consolidate(task_a_batches, nn.CrossEntropyLoss(reduction="sum"))
        ...train on task B with loss = loss_fn(model(x), y) + ewc.penalty()

    With ``hesscale.backward(loss, gn=True)`` (AdaHesScaleGN) on such a loss, name the network
    output (``output=model_output``): the penalty is a loss term beside the network, and its
    curvature, ``strength * importance``, is kept.

    Args:
        model: the model whose parameters (those that require grad) are anchored.
        strength: lambda, the weight of the penalty.
        decay: gamma, how much of the earlier tasks' importance is kept at each consolidation
            (1: plain sum over tasks).
        gn: True for HesScaleGN (the Fisher / GGN diagonal), False for HesScale.
    """

    def __init__(
        self, model: nn.Module, strength: float = 1.0, decay: float = 1.0, gn: bool = True
    ) -> None:
        if not strength >= 0:
            raise ValueError(f"EWC: strength={strength!r} must be >= 0.")
        if not 0 <= decay <= 1:
            raise ValueError(f"EWC: decay={decay!r} must be in [0, 1].")
        self.model, self.strength, self.decay, self.gn = model, strength, decay, gn
        self.importance: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}

    def consolidate(
        self,
        data: Iterable,
        loss_fn: Callable[[Any, Any], Tensor],
        per_example: bool = True,
        progress: bool = False,
    ) -> None:
        """End of a task: add the importances from ``data`` (``(x, y)`` batches of the task,
        ``loss_fn`` sum-reduced; ``per_example``: divided by the number of examples, so that
        ``strength`` does not depend on how much data was used) and anchor at the current
        weights."""
        batches = list(data)
        new = diagonal(self.model, batches, loss_fn, gn=self.gn, progress=progress)
        if per_example:
            n = sum(len(y) for _, y in batches)
            new = {name: h / n for name, h in new.items()}
        self.importance = {
            name: h + self.decay * self.importance[name] if name in self.importance else h
            for name, h in new.items()
        }
        self.anchor = {
            name: p.detach().clone()
            for name, p in self.model.named_parameters()
            if name in self.importance
        }

    def penalty(self) -> Tensor:
        """strength / 2 * sum_i F_i (theta_i - theta*_i)^2 (zero before any consolidation)."""
        params = dict(self.model.named_parameters())
        total = torch.zeros((), device=next(self.model.parameters()).device)
        for name, importance in self.importance.items():
            total = total + (importance * (params[name] - self.anchor[name]).square()).sum()
        return 0.5 * self.strength * total
