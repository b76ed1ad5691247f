"""Rollouts: the transitions a policy collects in an environment between two updates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hesscale.errors import Diverged
from hesscale.experiments.rl.envs import Environment
from hesscale.experiments.rl.losses import gaussian_log_prob
from hesscale.experiments.rl.policy import GaussianActorCritic


@dataclass
class Rollout:
    """T transitions (see hesscale.experiments.rl.returns for next_values, terminated, ends)."""

    observations: Tensor  # (T, obs_dim), normalized as the policy saw them
    actions: Tensor  # (T, act_dim), as sampled (before clipping to the bounds)
    log_probs: Tensor  # (T,) log pi(a_t | s_t) when sampled
    values: Tensor  # (T,) V(s_t)
    next_values: Tensor  # (T,) V(s_{t+1}); V of the last observation for a truncated episode
    rewards: Tensor  # (T,) as the learner sees them (scaled if normalize_reward)
    terminated: Tensor  # (T,) bool
    ends: Tensor  # (T,) bool: terminated or truncated

    def __len__(self) -> int:
        return len(self.rewards)


@torch.no_grad()
def collect(env: Environment, policy: GaussianActorCritic, steps: int) -> Rollout:
    """Act ``steps`` times with actions sampled from the policy, a ~ N(mean, exp(log_std)^2)."""
    observations, actions, log_probs, values, rewards = [], [], [], [], []
    terminated, ends = np.zeros(steps, bool), np.zeros(steps, bool)
    truncated_values: dict[int, Tensor] = {}
    for t in range(steps):
        observation = env.observation
        mean, log_std, value = policy(observation.unsqueeze(0))
        action = mean + torch.exp(log_std) * torch.randn_like(mean)
        if not bool(torch.isfinite(action).all()):
            raise Diverged("the policy's action is not finite")
        transition = env.step(action[0].numpy().astype(np.float64))
        observations.append(observation)
        actions.append(action[0])
        log_probs.append(gaussian_log_prob(action, mean, log_std)[0])
        values.append(value[0])
        rewards.append(transition.reward)
        terminated[t] = transition.terminated
        ends[t] = transition.terminated or transition.truncated
        if transition.final_observation is not None:  # a time limit: bootstrap from here
            truncated_values[t] = policy(transition.final_observation.unsqueeze(0))[2][0]
    values_t = torch.stack(values)
    last_value = policy(env.observation.unsqueeze(0))[2][0]
    next_values = torch.cat([values_t[1:], last_value.unsqueeze(0)])
    for t in np.flatnonzero(ends):
        next_values[t] = truncated_values.get(int(t), torch.zeros(()))
    return Rollout(
        torch.stack(observations),
        torch.stack(actions),
        torch.stack(log_probs),
        values_t,
        next_values,
        torch.tensor(rewards, dtype=torch.float32),
        torch.from_numpy(terminated),
        torch.from_numpy(ends),
    )
