"""Running statistics that normalise observations and scale rewards (the usual PPO recipe for
continuous control), with state dicts so that a resumed run continues with the same ones.

- Observations: o -> clip((o - mean) / sqrt(var + 1e-8), -10, 10), mean and var over every
  observation seen so far (updated with each one before it is normalized).
- Rewards: r -> clip(r / sqrt(var + 1e-8), -10, 10), var the running variance of the discounted
  return G = gamma * G + r (restarted at each episode's end). The mean is not subtracted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

EPSILON = 1e-8
CLIP = 10.0


class RunningMeanStd:
    """Mean and variance of every sample given to ``update`` so far (Chan et al.'s merge of
    the previous statistics with each new batch)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = EPSILON  # as if one tiny sample of mean 0, var 1: no division by zero

    def update(self, batch: np.ndarray) -> None:
        """Add ``batch`` (shape (n, *shape)) to the statistics."""
        batch_mean, batch_var, n = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict[str, Any]:
        return {
            "mean": torch.from_numpy(np.array(self.mean, dtype=np.float64)),
            "var": torch.from_numpy(np.array(self.var, dtype=np.float64)),
            "count": float(self.count),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = state["mean"].numpy().astype(np.float64)
        self.var = state["var"].numpy().astype(np.float64)
        self.count = float(state["count"])


class ObservationNormalizer:
    """clip((o - mean) / sqrt(var + 1e-8), -10, 10), the statistics updated with each ``o``."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.stats = RunningMeanStd(shape)

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        self.stats.update(observation[None])
        scaled = (observation - self.stats.mean) / np.sqrt(self.stats.var + EPSILON)
        return np.clip(scaled, -CLIP, CLIP)

    def state_dict(self) -> dict[str, Any]:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)


class RewardScaler:
    """clip(r / sqrt(var(G) + 1e-8), -10, 10), G the discounted return of the episode so far."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma
        self.stats = RunningMeanStd(())
        self.discounted_return = 0.0

    def __call__(self, reward: float, episode_ended: bool) -> float:
        self.discounted_return = self.gamma * self.discounted_return + reward
        self.stats.update(np.array([self.discounted_return]))
        if episode_ended:
            self.discounted_return = 0.0
        return float(np.clip(reward / np.sqrt(self.stats.var + EPSILON), -CLIP, CLIP))

    def state_dict(self) -> dict[str, Any]:
        return {**self.stats.state_dict(), "discounted_return": self.discounted_return}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)
        self.discounted_return = float(state["discounted_return"])
