"""PPO and A2C for continuous actions, as steppers of the experiments' Trainer: one step is one
rollout and the updates on it.

- PPO (clipped surrogate; defaults: the usual MuJoCo recipe): ``rollout_steps`` = 2048
  transitions, advantages by GAE (gamma 0.99, lambda 0.95), then ``epochs`` = 10 passes over
  them in ``minibatches`` = 32 shuffled mini-batches, each one optimizer step on
  ``ppo_loss`` (clip 0.2, value coefficient 0.5, entropy coefficient 0, advantages normalized
  per mini-batch).
- A2C: ``rollout_steps`` = 5 transitions, n-step returns (gamma 0.99), one optimizer step on
  ``a2c_loss``.

Both: one environment, observations normalized and rewards scaled (``normalize_obs``,
``normalize_reward``), no gradient clipping unless ``max_grad_norm`` is set, no step-size
annealing. Time limits bootstrap from the value of the episode's last observation;
terminations do not.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hesscale.errors import Diverged
from hesscale.experiments.learners import Learner
from hesscale.experiments.rl.envs import Environment
from hesscale.experiments.rl.losses import LossParts, a2c_loss, ppo_loss
from hesscale.experiments.rl.policy import GaussianActorCritic
from hesscale.experiments.rl.returns import gae, n_step_returns
from hesscale.experiments.rl.rollout import Rollout, collect
from hesscale.experiments.rl.update import update
from hesscale.experiments.trainer import Metrics


class OnPolicyLearning:
    """Collect a rollout, learn from it (``learn``, per algorithm); log finished episodes.

    Metrics per step: ``return`` and ``length`` of the episodes that ended during the rollout
    (undiscounted, unscaled rewards; a step in which none ended counts nothing), and the loss
    terms averaged over the step's optimizer steps."""

    metrics = ("return", "length", "policy_loss", "value_loss", "entropy")
    unit = "environment steps"  # what --steps counts for an RL task

    def __init__(
        self,
        env: Environment,
        policy: GaussianActorCritic,
        learner: Learner,
        options: dict[str, Any],
    ) -> None:
        self.env, self.policy, self.learner, self.options = env, policy, learner, options
        self.units_per_step = options["rollout_steps"]  # environment steps per Trainer step
        self.unit = "environment steps"  # what one unit of --steps is

    def step(self) -> Metrics:
        first = len(self.env.episodes["return"])
        rollout = collect(self.env, self.policy, self.options["rollout_steps"])
        metrics = self.learn(rollout)
        returns = self.env.episodes["return"][first:]
        lengths = self.env.episodes["length"][first:]
        return {
            "return": (sum(returns), len(returns)),
            "length": (sum(lengths), len(lengths)),
        } | metrics

    def learn(self, rollout: Rollout) -> Metrics:
        raise NotImplementedError

    def _update(self, parts: LossParts, outputs: tuple) -> None:
        if not math.isfinite(parts.loss.item()):
            raise Diverged(f"loss {parts.loss.item()}")
        try:
            update(self.learner, parts.loss, outputs, self.options["max_grad_norm"])
        except FloatingPointError as error:  # e.g. hesscale.optim.NonFiniteError
            raise Diverged(str(error)) from error

    def evaluate(self) -> dict[str, float]:
        return {}  # RL runs log the returns of their training episodes

    def log_fields(self) -> dict[str, Any]:
        """Added to the run's log: environment steps per Trainer step, and every finished
        episode (the environment step it ended at, its return and length)."""
        return {
            "env_steps_per_step": self.units_per_step,
            "episodes": {k: list(v) for k, v in self.env.episodes.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.learner.optimizer.state_dict(),
            "env": self.env.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.learner.optimizer.load_state_dict(state["optimizer"])
        self.env.load_state_dict(state["env"])


def _sums(parts: list[LossParts]) -> Metrics:
    return {
        "policy_loss": (sum(p.policy_loss.item() for p in parts), len(parts)),
        "value_loss": (sum(p.value_loss.item() for p in parts), len(parts)),
        "entropy": (sum(p.entropy.item() for p in parts), len(parts)),
    }


class PPO(OnPolicyLearning):
    """PPO: GAE advantages, ``epochs`` passes of ``minibatches`` clipped-surrogate steps."""

    def learn(self, rollout: Rollout) -> Metrics:
        o = self.options
        advantages, returns = gae(
            rollout.rewards,
            rollout.values,
            rollout.next_values,
            rollout.terminated,
            rollout.ends,
            o["gamma"],
            o["gae_lambda"],
        )
        parts = []
        for _ in range(o["epochs"]):
            for index in torch.randperm(len(rollout)).tensor_split(o["minibatches"]):
                outputs = self.policy(rollout.observations[index])
                loss = ppo_loss(
                    *outputs,
                    rollout.actions[index],
                    rollout.log_probs[index],
                    advantages[index],
                    returns[index],
                    clip=o["clip"],
                    vf_coef=o["vf_coef"],
                    ent_coef=o["ent_coef"],
                    normalize_advantages=o["normalize_advantages"],
                )
                self._update(loss, outputs)
                parts.append(loss)
        return _sums(parts)


class A2C(OnPolicyLearning):
    """A2C: n-step returns over the rollout, one step on the advantage-weighted log-likelihood."""

    def learn(self, rollout: Rollout) -> Metrics:
        o = self.options
        returns = n_step_returns(
            rollout.rewards, rollout.next_values, rollout.terminated, rollout.ends, o["gamma"]
        )
        outputs = self.policy(rollout.observations)
        loss = a2c_loss(
            *outputs,
            rollout.actions,
            returns - rollout.values,
            returns,
            vf_coef=o["vf_coef"],
            ent_coef=o["ent_coef"],
        )
        self._update(loss, outputs)
        return _sums([loss])


ALGORITHMS: dict[str, type[OnPolicyLearning]] = {"ppo": PPO, "a2c": A2C}
