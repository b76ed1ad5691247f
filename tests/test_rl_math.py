"""The RL pieces that need no environment: returns and advantages against hand computations,
the Gaussian log-likelihood, PPO's clipping, and HesScale's diagonal of the losses at the
network outputs against the exact Hessian."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import hessian

import hesscale
from hesscale.experiments.rl.losses import (
    a2c_loss,
    gaussian_entropy,
    gaussian_log_prob,
    ppo_loss,
)
from hesscale.experiments.rl.policy import actor_critic
from hesscale.experiments.rl.returns import gae, n_step_returns

# A rollout of 5 transitions: an episode truncated by a time limit after t=1 (bootstraps from
# V of its last observation, 4.0), a terminal state at t=3 (no bootstrap), then the rollout
# ends mid-episode at t=4 (bootstraps from V(s_5) = 6.0).
REWARDS = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
VALUES = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5], dtype=torch.float64)
NEXT_VALUES = torch.tensor([1.5, 4.0, 3.5, 9.9, 6.0], dtype=torch.float64)  # 9.9: unused
TERMINATED = torch.tensor([False, False, False, True, False])
ENDS = torch.tensor([False, True, False, True, False])
GAMMA, LAM = 0.9, 0.8


def test_gae_equals_the_hand_computation():
    g, gl = GAMMA, GAMMA * LAM
    d0 = 1.0 + g * 1.5 - 0.5
    d1 = 2.0 + g * 4.0 - 1.5  # truncated: bootstrap from the last observation's value
    d2 = 3.0 + g * 3.5 - 2.5
    d3 = 4.0 - 3.5  # terminated: no bootstrap
    d4 = 5.0 + g * 6.0 - 4.5
    expected = torch.tensor([d0 + gl * d1, d1, d2 + gl * d3, d3, d4], dtype=torch.float64)
    advantages, returns = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, ENDS, GAMMA, LAM)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + VALUES)


def test_n_step_returns_equal_the_hand_computation_and_gae_with_lambda_one():
    g = GAMMA
    r1 = 2.0 + g * 4.0
    r3 = 4.0
    expected = torch.tensor([1.0 + g * r1, r1, 3.0 + g * r3, r3, 5.0 + g * 6.0]).double()
    returns = n_step_returns(REWARDS, NEXT_VALUES, TERMINATED, ENDS, GAMMA)
    torch.testing.assert_close(returns, expected)
    _, gae_returns = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, ENDS, GAMMA, 1.0)
    torch.testing.assert_close(gae_returns, expected)


def test_a2c_five_step_returns_over_a_rollout_without_episode_end():
    rewards = torch.ones(5, dtype=torch.float64)
    next_values = torch.full((5,), 10.0, dtype=torch.float64)
    no = torch.zeros(5, dtype=torch.bool)
    returns = n_step_returns(rewards, next_values, no, no, 0.99)
    # R_0 = 1 + 0.99 + 0.99^2 + 0.99^3 + 0.99^4 + 0.99^5 * 10
    assert returns[0].item() == pytest.approx(sum(0.99**k for k in range(5)) + 0.99**5 * 10)


def test_gae_refuses_a_discount_outside_zero_one():
    with pytest.raises(ValueError, match="gamma"):
        gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, ENDS, 1.5, 0.9)


def test_gaussian_log_prob_and_entropy_equal_torch_distributions():
    torch.manual_seed(0)
    mean, log_std, actions = torch.randn(7, 3), torch.randn(7, 3), torch.randn(7, 3)
    normal = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(
        gaussian_log_prob(actions, mean, log_std), normal.log_prob(actions).sum(-1)
    )
    torch.testing.assert_close(gaussian_entropy(log_std), normal.entropy().sum(-1))


def _ppo_batch(n: int = 6, a: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, a, generator=g, dtype=torch.float64)
    log_std = 0.3 * torch.randn(n, a, generator=g, dtype=torch.float64)
    values = torch.randn(n, generator=g, dtype=torch.float64)
    actions = mean + log_std.exp() * torch.randn(n, a, generator=g, dtype=torch.float64)
    # old log-probabilities such that the ratios spread over [0.6, 1.5]: some clipped
    ratios = torch.linspace(0.6, 1.5, n, dtype=torch.float64)
    old = gaussian_log_prob(actions, mean, log_std) - ratios.log()
    advantages = torch.randn(n, generator=g, dtype=torch.float64)
    returns = torch.randn(n, generator=g, dtype=torch.float64)
    return mean, log_std, values, actions, old, advantages, returns


def test_ppo_clipping_drops_the_gradient_exactly_where_the_clipped_term_is_smaller():
    mean, log_std, values, actions, _, _, returns = _ppo_batch(n=4, a=1)
    log_probs = gaussian_log_prob(actions, mean, log_std)
    ratios = torch.tensor([1.5, 1.1, 0.5, 0.5], dtype=torch.float64)
    advantages = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    # min(r A, clip(r) A): 1.5*1 -> clipped 1.2; 1.1 -> unclipped; 0.5*1 -> unclipped 0.5;
    # 0.5*-1 = -0.5 > clip -0.8 -> clipped (no gradient)
    surrogate = torch.tensor([1.2, 1.1, 0.5, -0.8], dtype=torch.float64)
    mean = mean.clone().requires_grad_(True)
    parts = ppo_loss(
        mean,
        log_std,
        values,
        actions,
        log_probs - ratios.log(),
        advantages,
        returns,
        clip=0.2,
        vf_coef=0.0,
        normalize_advantages=False,
    )
    assert parts.policy_loss.item() == pytest.approx(-surrogate.mean().item())
    assert parts.clip_fraction.item() == pytest.approx(0.75)  # |r - 1| > 0.2 for three of four
    parts.loss.backward()
    # d/dmean of -r A / n = -A r (a - mean) / std^2 / n for the unclipped ones, 0 otherwise
    std2 = (2 * log_std).exp()
    expected = -advantages * ratios * (actions - mean.detach())[:, 0] / std2[:, 0] / 4
    expected[[0, 3]] = 0.0
    torch.testing.assert_close(mean.grad[:, 0], expected)


def _outputs_hessian_diagonals(loss_of, outputs):
    """The exact Hessian diagonal of ``loss_of(*outputs)`` w.r.t. each output (dense)."""
    flat = torch.cat([o.reshape(-1) for o in outputs])
    sizes = [o.numel() for o in outputs]

    def f(x):
        return loss_of(*[p.view_as(o) for p, o in zip(x.split(sizes), outputs, strict=True)])

    diagonal = hessian(f, flat).diagonal()
    return [d.view_as(o) for d, o in zip(diagonal.split(sizes), outputs, strict=True)]


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def test_a2c_loss_diagonal_at_the_outputs_is_the_exact_hessian_diagonal():
    """The A2C loss is linear in log pi, so HesScale drops nothing at the network's outputs:
    its diagonal w.r.t. the mean, the log-std and the value is exact."""
    mean, log_std, values, actions, _, advantages, returns = _ppo_batch()

    def loss_of(m, s, v):
        return a2c_loss(m, s, v, actions, advantages, returns, ent_coef=0.01).loss

    outputs = _leaves(mean, log_std, values)
    hesscale.backward(loss_of(*outputs))
    exact = _outputs_hessian_diagonals(loss_of, [mean, log_std, values])
    for output, h in zip(outputs, exact, strict=True):
        torch.testing.assert_close(output.hesscale, h, rtol=1e-10, atol=1e-12)


def test_ppo_loss_diagonal_at_the_outputs_exact_for_mean_and_value():
    """PPO's loss: exact at the mean and the value. At the log-std HesScale adds what the
    definition prescribes: log pi = sum_j (X_j + Y_j) with X_j = -z_j^2/2 (z_j = (a_j - mu_j)
    exp(-s_j)) and Y_j = -s_j, two paths from s_j to the loss; the diagonal propagation drops
    their cross term 2 f'' X'_j Y'_j (f'' the loss's second derivative w.r.t. log pi), so it is
    the exact value plus 2 f'' z_j^2, with f'' = -A rho / n where the unclipped term is the
    smaller and 0 where the clipped one is."""
    mean, log_std, values, actions, old, advantages, returns = _ppo_batch()
    n = len(values)

    def loss_of(m, s, v):
        parts = ppo_loss(m, s, v, actions, old, advantages, returns, normalize_advantages=False)
        return parts.loss

    outputs = _leaves(mean, log_std, values)
    hesscale.backward(loss_of(*outputs))
    exact = _outputs_hessian_diagonals(loss_of, [mean, log_std, values])
    torch.testing.assert_close(outputs[0].hesscale, exact[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(outputs[2].hesscale, exact[2], rtol=1e-10, atol=1e-12)

    ratio = (gaussian_log_prob(actions, mean, log_std) - old).exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(0.8, 1.2) * advantages
    f2 = torch.where(unclipped <= clipped, -advantages * ratio / n, torch.zeros_like(ratio))
    z2 = ((actions - mean) * (-log_std).exp()) ** 2
    torch.testing.assert_close(
        outputs[1].hesscale, exact[1] + 2 * f2.unsqueeze(1) * z2, rtol=1e-10, atol=1e-12
    )
    assert (f2 != 0).any() and (f2 == 0).any()  # both regimes are tested


@pytest.mark.parametrize("shared", [False, True])
def test_ppo_loss_through_the_policy_network_matches_the_graph_definition(shared, float64):
    """hesscale.backward (HesScale and HesScaleGN with the outputs named) on a policy network
    and PPO's loss equals the HesScale definition evaluated operation by operation."""
    from tests.engine_checks import check_graph

    torch.manual_seed(0)
    policy = actor_critic((3,), 5, (4, 4), "tanh", shared).double()
    params = {k: v.detach() for k, v in policy.named_parameters()}
    obs = torch.randn(5, 3)
    _, _, _, actions, old, advantages, returns = _ppo_batch(n=5)

    def loss_fn(p, obs):
        outputs = torch.func.functional_call(policy, p, (obs,))
        return ppo_loss(*outputs, actions, old, advantages, returns, ent_coef=0.01).loss, outputs

    check_graph(loss_fn, params, obs, name_output=True)


def test_policy_networks_shapes_groups_and_initial_policy():
    torch.manual_seed(0)
    separate = actor_critic((5,), 5)
    shared = actor_critic((5,), 5, hidden=(8,), activation="relu", shared=True)
    obs = torch.randn(4, 5)
    for policy, groups in ((separate, 2), (shared, 1)):
        mean, log_std, value = policy(obs)
        assert mean.shape == (4, 2) and log_std.shape == (4, 2) and value.shape == (4,)
        assert len(policy.param_groups()) == groups
        grouped = sum(p.numel() for g in policy.param_groups() for p in g["params"])
        assert grouped == sum(p.numel() for p in policy.parameters())
    hidden = [m for m in separate.actor if isinstance(m, torch.nn.Linear)]
    assert [layer.out_features for layer in hidden] == [64, 64, 4]  # tanh 64x2 by default
    mean, log_std, _ = separate(obs)
    assert mean.abs().max() < 0.1 and log_std.abs().max() < 0.1  # close to N(0, 1)
    with pytest.raises(ValueError, match="2 x action dimension"):
        actor_critic((5,), 4)  # an even number of outputs: no (mean, log_std, value) split
    with pytest.raises(ValueError, match="flat observations"):
        actor_critic((1, 8, 8), 5)


def test_losses_are_finite_numbers_with_their_terms():
    """Each term from its definition: the ratios _ppo_batch built in (0.6 .. 1.5), PPO's
    clipped surrogate on normalized advantages, torch.distributions' Gaussian entropy."""
    mean, log_std, values, actions, old, advantages, returns = _ppo_batch()
    parts = ppo_loss(mean, log_std, values, actions, old, advantages, returns, ent_coef=0.1)
    ratios = torch.linspace(0.6, 1.5, len(values), dtype=torch.float64)
    a = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    surrogate = [min(r * x, min(max(r, 0.8), 1.2) * x) for r, x in zip(ratios, a, strict=True)]
    policy_loss = -sum(surrogate).item() / len(surrogate)
    value_loss = 0.5 * ((values - returns) ** 2).mean().item()
    normal = torch.distributions.Normal(mean, log_std.exp())
    entropy = normal.entropy().sum(-1).mean().item()
    assert gaussian_entropy(log_std).mean().item() == pytest.approx(entropy)
    assert parts.policy_loss.item() == pytest.approx(policy_loss)
    expected = policy_loss + 0.5 * value_loss - 0.1 * entropy
    assert parts.value_loss.item() == pytest.approx(value_loss)
    assert parts.entropy.item() == pytest.approx(entropy)
    assert parts.loss.item() == pytest.approx(expected) and math.isfinite(parts.loss.item())
