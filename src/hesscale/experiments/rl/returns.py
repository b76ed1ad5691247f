"""Advantages and returns of a rollout: generalised advantage estimation and n-step returns.

A rollout holds T transitions s_t -a_t-> (r_t, s_{t+1}). For each, ``next_values[t]`` is the
critic's value of the state that followed, V(s_{t+1}) (for a truncated episode: of its last
observation, so that a time limit bootstraps), ``terminated[t]`` says the episode ended in a
terminal state there (nothing follows: no bootstrap), and ``ends[t]`` that the episode ended
there for either reason (terminated or truncated; the next transition starts a new episode).

    delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - ends_t) * A_{t+1}          (A_T = 0)
    R_t     = A_t + V(s_t)

lambda = 1 gives the n-step returns of A2C, R_t = r_t + gamma * r_{t+1} + ... bootstrapped
from V at the end of the rollout (or of the episode, if it is truncated within the rollout).
"""

from __future__ import annotations

import torch
from torch import Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    ends: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """(advantages A_t, returns R_t = A_t + V(s_t)) of a rollout (see the module docstring).

    All arguments are tensors of shape (T,) (``terminated``, ``ends``: bool or 0/1)."""
    if not 0 <= gamma <= 1 or not 0 <= lam <= 1:
        raise ValueError(f"gamma and lambda must lie in [0, 1], got {gamma}, {lam}.")
    keep = 1.0 - terminated.to(values.dtype)
    carry = 1.0 - ends.to(values.dtype)
    deltas = rewards + gamma * keep * next_values - values
    advantages = torch.empty_like(values)
    running = values.new_zeros(())
    for t in range(len(rewards) - 1, -1, -1):
        running = deltas[t] + gamma * lam * carry[t] * running
        advantages[t] = running
    return advantages, advantages + values


def n_step_returns(
    rewards: Tensor, next_values: Tensor, terminated: Tensor, ends: Tensor, gamma: float
) -> Tensor:
    """R_t = r_t + gamma * R_{t+1} while the episode goes on within the rollout; at an
    episode's end or the rollout's last step, R_t = r_t + gamma * (1 - terminated_t) *
    V(s_{t+1})."""
    returns = torch.empty_like(rewards)
    for t in range(len(rewards) - 1, -1, -1):
        if t == len(rewards) - 1 or bool(ends[t]):
            following = 0.0 if bool(terminated[t]) else next_values[t]
        else:
            following = returns[t + 1]
        returns[t] = rewards[t] + gamma * following
    return returns
