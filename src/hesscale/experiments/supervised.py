"""Supervised learning from a stream of mini-batches, as a stepper for the Trainer.

Each step scores a mini-batch (cross-entropy loss, accuracy) with the current network, then
the learner updates on it: performance is measured online, before the update. The task is
anything that yields batches (``tasks.SupervisedTask``); one without ``state_dict`` is
continued after a checkpoint by replaying its stream from its seed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hesscale.errors import Diverged
from hesscale.experiments import parallel
from hesscale.experiments.learners import Learner
from hesscale.experiments.tasks import SupervisedTask
from hesscale.experiments.trainer import Metrics


class SupervisedLearning:
    """One mini-batch of ``task`` per step; ``learner`` updates ``model`` on it. With ``ranks``
    (a run launched by torchrun), each rank trains a DistributedDataParallel copy on its share
    of each mini-batch (see hesscale.experiments.parallel)."""

    metrics = ("loss", "accuracy")

    def __init__(
        self,
        task: SupervisedTask,
        model: nn.Module,
        learner: Learner,
        device: torch.device,
        ranks: parallel.Ranks | None = None,
    ) -> None:
        self.task, self.learner, self.device, self.ranks = task, learner, device, ranks
        self.model, self.loss_fn = learner.prepare(model.to(device), nn.CrossEntropyLoss())
        self.network = self.model  # what is saved and evaluated
        if ranks is not None:
            if learner.uses_backpack:
                raise ValueError(
                    f"{learner.name} computes its curvature with BackPACK, which does not work "
                    "under DistributedDataParallel; run it in one process, or use adahesscale."
                )
            self.model = torch.nn.parallel.DistributedDataParallel(self.model)
        self.model.train()
        self.batches = 0  # drawn from the task so far

    def step(self) -> Metrics:
        x, y = self.task.next_batch()
        self.batches += 1
        if self.ranks is not None:
            x, y = parallel.share(x, self.ranks), parallel.share(y, self.ranks)
        x, y = x.to(self.device), y.to(self.device)
        output = self.model(x)
        loss = self.loss_fn(output, y)
        value = loss.item()
        hits, count = (output.argmax(dim=1) == y).sum().item(), len(y)
        if self.ranks is not None:  # the whole batch's loss: the mean of the shares' means
            value, hits, count = parallel.sums(value / self.ranks.world, hits, count)
        if not math.isfinite(value):
            raise Diverged(f"loss {value}")
        try:
            self.learner.step(loss, output)
        except FloatingPointError as error:  # e.g. hesscale.optim.NonFiniteError
            raise Diverged(str(error)) from error
        return {"loss": (value, 1), "accuracy": (hits, count)}

    def evaluate(self) -> dict[str, float]:
        """Loss and accuracy on the whole test split (DeepOBS-style evaluation)."""
        if not hasattr(self.task, "test_batches"):
            raise ValueError("This task has no held-out test split (leave out --eval-every).")
        self.model.eval()
        total = hits = n = 0
        with torch.no_grad():
            for x, y in self.task.test_batches():
                x, y = x.to(self.device), y.to(self.device)
                output = self.network(x)
                total += nn.functional.cross_entropy(output, y, reduction="sum").item()
                hits += (output.argmax(dim=1) == y).sum().item()
                n += len(y)
        self.model.train()
        return {"loss": total / n, "accuracy": hits / n}

    def state_dict(self) -> dict[str, Any]:
        task = self.task.state_dict() if hasattr(self.task, "state_dict") else None
        return {
            "model": self.network.state_dict(),
            "optimizer": self.learner.optimizer.state_dict(),
            "task": task,
            "batches": self.batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["model"])
        self.learner.optimizer.load_state_dict(state["optimizer"])
        self.batches = state.get("batches", 0)
        if state["task"] is not None:
            self.task.load_state_dict(state["task"])
        else:  # a task without state_dict: its stream again, from its seed, up to here
            for _ in range(self.batches):
                self.task.next_batch()
