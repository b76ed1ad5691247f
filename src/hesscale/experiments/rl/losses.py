"""The actor-critic losses, written as users write them (plain torch on the network's outputs),
so that ``hesscale.backward`` gets the curvature of exactly this loss.

A Gaussian policy with mean mu and log standard deviation s (per action dimension):

    log pi(a) = sum_j [ -(a_j - mu_j)^2 / (2 exp(2 s_j)) - s_j - log(2 pi) / 2 ]
    entropy   = sum_j [ s_j + (1 + log(2 pi)) / 2 ]

PPO (clipped surrogate), with ratio rho = exp(log pi(a) - log pi_old(a)) and advantages A
(normalized per mini-batch unless told otherwise):

    L = -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)) + c_v mean((V - R)^2) / 2 - c_e mean(H)

A2C: L = -mean(A log pi(a)) + c_v mean((V - R)^2) / 2 - c_e mean(H), A = R - V(s) (constant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(actions: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(actions; mean, exp(log_std)^2), summed over the last (action) dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - HALF_LOG_2PI).sum(-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """Entropy of N(., exp(log_std)^2), summed over the last (action) dimension."""
    return (log_std + 0.5 + HALF_LOG_2PI).sum(-1)


@dataclass
class LossParts:
    """The loss and its terms (detached, for the log)."""

    loss: Tensor
    policy_loss: Tensor
    value_loss: Tensor
    entropy: Tensor
    clip_fraction: Tensor | None = None  # PPO: the fraction of ratios outside the clip range


def _value_and_entropy(
    values: Tensor, returns: Tensor, log_std: Tensor, vf_coef: float, ent_coef: float
) -> tuple[Tensor, Tensor, Tensor]:
    value_loss = 0.5 * ((values - returns) ** 2).mean()
    entropy = gaussian_entropy(log_std).mean()
    terms = vf_coef * value_loss
    if ent_coef != 0:  # only then in the graph
        terms = terms - ent_coef * entropy
    return terms, value_loss, entropy


def ppo_loss(
    mean: Tensor,
    log_std: Tensor,
    values: Tensor,
    actions: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    returns: Tensor,
    *,
    clip: float = 0.2,
    vf_coef: float = 0.5,
    ent_coef: float = 0.0,
    normalize_advantages: bool = True,
) -> LossParts:
    """PPO's clipped-surrogate loss of one mini-batch (see the module docstring)."""
    if normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    ratio = torch.exp(gaussian_log_prob(actions, mean, log_std) - old_log_probs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    surrogate = torch.minimum(unclipped, clipped)
    policy_loss = -surrogate.mean()
    terms, value_loss, entropy = _value_and_entropy(values, returns, log_std, vf_coef, ent_coef)
    clip_fraction = ((ratio.detach() - 1).abs() > clip).float().mean()
    return LossParts(
        policy_loss + terms,
        policy_loss.detach(),
        value_loss.detach(),
        entropy.detach(),
        clip_fraction,
    )


def a2c_loss(
    mean: Tensor,
    log_std: Tensor,
    values: Tensor,
    actions: Tensor,
    advantages: Tensor,
    returns: Tensor,
    *,
    vf_coef: float = 0.5,
    ent_coef: float = 0.0,
) -> LossParts:
    """A2C's loss of one rollout (see the module docstring)."""
    policy_loss = -(advantages * gaussian_log_prob(actions, mean, log_std)).mean()
    terms, value_loss, entropy = _value_and_entropy(values, returns, log_std, vf_coef, ent_coef)
    return LossParts(
        policy_loss + terms, policy_loss.detach(), value_loss.detach(), entropy.detach()
    )
