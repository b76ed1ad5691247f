"""Gaussian actor-critic networks: observation -> (action mean, action log-std, state value).

Built-in networks ``actor_critic_tanh`` / ``_relu`` (separate) and ``actor_critic_tanh_shared``
/ ``_relu_shared`` (hesscale.experiments.networks), for the RL tasks.

The mean and the log standard deviation of the Gaussian policy both come from the network
(state-dependent), and so does the value. Two shapes, each an MLP of ``hidden`` sizes with an
activation (default tanh, 64 x 64: the size of the PPO/A2C MuJoCo studies):

- separate: an actor MLP whose read-out holds [mean, log_std] and a critic MLP whose read-out
  is the value (two parameter groups, so that a per-group option, e.g. AdaHesScale's
  trust region, applies to each network on its own);
- shared: one trunk whose read-out holds [mean, log_std, value] (one parameter group).

Initialisation, as in the usual PPO recipe: orthogonal weights (gain sqrt(2) in hidden layers,
0.01 for the policy's read-out, 1 for the value's), zero biases; the initial policy is then
close to N(0, 1) in every action dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hesscale.experiments.networks import fully_connected

DEFAULT_HIDDEN = (64, 64)
HIDDEN_GAIN, POLICY_GAIN, VALUE_GAIN = math.sqrt(2), 0.01, 1.0


class GaussianActorCritic(nn.Module):
    """``forward(obs)`` -> (mean, log_std, value): shapes (N, A), (N, A), (N,)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        activation: str = "tanh",
        shared: bool = False,
    ) -> None:
        super().__init__()
        self.act_dim, self.shared = act_dim, shared
        if shared:
            self.trunk = fully_connected((obs_dim,), 2 * act_dim + 1, hidden, activation)
            _init(self.trunk, [POLICY_GAIN] * (2 * act_dim) + [VALUE_GAIN])
        else:
            self.actor = fully_connected((obs_dim,), 2 * act_dim, hidden, activation)
            self.critic = fully_connected((obs_dim,), 1, hidden, activation)
            _init(self.actor, [POLICY_GAIN] * (2 * act_dim))
            _init(self.critic, [VALUE_GAIN])

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = self.act_dim
        if self.shared:
            mean, log_std, value = self.trunk(obs).split([a, a, 1], dim=-1)
        else:
            mean, log_std = self.actor(obs).split([a, a], dim=-1)
            value = self.critic(obs)
        return mean, log_std, value.squeeze(-1)

    def param_groups(self) -> list[dict[str, Any]]:
        """One group per network (see the module docstring)."""
        if self.shared:
            return [{"params": list(self.trunk.parameters())}]
        return [
            {"params": list(self.actor.parameters())},
            {"params": list(self.critic.parameters())},
        ]


def actor_critic(
    input_shape: Sequence[int],
    n_outputs: int,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
    activation: str = "tanh",
    shared: bool = False,
) -> GaussianActorCritic:
    """The network of an RL task (hesscale.experiments.rl.task): observations of
    ``input_shape`` (one dimension), ``n_outputs`` = 2 x action dimension + 1."""
    if len(input_shape) != 1 or n_outputs < 3 or n_outputs % 2 != 1:
        raise ValueError(
            "An actor-critic network is for RL tasks (rl:...): flat observations and n_outputs "
            f"= 2 x action dimension + 1; got input_shape {tuple(input_shape)}, n_outputs "
            f"{n_outputs}."
        )
    if not hidden or not all(isinstance(h, int) and h >= 1 for h in hidden):
        raise ValueError(f"hidden sizes must be integers >= 1, got {list(hidden)}.")
    act_dim = (n_outputs - 1) // 2
    return GaussianActorCritic(input_shape[0], act_dim, tuple(hidden), activation, shared)


def _init(mlp: nn.Sequential, readout_gains: list[float]) -> None:
    """Orthogonal weights (gain sqrt(2)), zero biases; the read-out's row i scaled to gain
    ``readout_gains[i]``."""
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for layer in linears:
            nn.init.orthogonal_(layer.weight, HIDDEN_GAIN)
            nn.init.zeros_(layer.bias)
        readout = linears[-1]
        nn.init.orthogonal_(readout.weight, 1.0)
        readout.weight.mul_(torch.tensor(readout_gains).unsqueeze(1))
