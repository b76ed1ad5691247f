"""RL tasks of the experiments: ``--task rl:<gymnasium id>``, registered as the task family
``rl:*`` (hesscale.experiments.tasks), whose task brings its own stepper (PPO or A2C).

Task options (``--task-opt KEY=VALUE``, a spec's ``task_options``): ``algo`` (``ppo``, the
default, or ``a2c``) and that algorithm's options (hesscale.experiments.rl.options.OPTIONS).
The network must be an actor-critic (``actor_critic_tanh``, ...: n_outputs is 2 x the action
dimension + 1, for the mean, the log-std and the value). ``--steps`` and ``--bin-size`` count
environment steps, rounded down to whole rollouts (one Trainer step is one rollout and the
updates on it). Runs use the CPU (networks this small gain nothing from a GPU).

Resuming a preempted run restores the networks, the optimizer, the normalisers' statistics,
the episode log, the step counters and every random generator (torch's, Python's, NumPy's and
the environment's). The simulator's state cannot be saved, so the episode that was running
when the run stopped is dropped and a new one starts: the continuation is a valid run, and the
same one every time it resumes from that checkpoint, but not identical to an uninterrupted run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hesscale.errors import ComponentError
from hesscale.experiments.rl.options import algorithm_options

if TYPE_CHECKING:
    from hesscale.experiments.learners import Learner
    from hesscale.experiments.rl.algorithms import OnPolicyLearning
    from hesscale.experiments.tasks import TaskSettings

PREFIX = "rl:"
DEFAULT_ALGO = "ppo"


def check_options(options: dict[str, Any]) -> None:
    """ValueError for options an RL task cannot use; MissingExtraError without gymnasium."""
    from hesscale.experiments.rl.envs import require

    options = dict(options)
    algorithm_options(options.pop("algo", DEFAULT_ALGO), options)
    require("gymnasium")


class RLTask:
    """The environment's facts for the network (``input_shape``: the observation's,
    ``n_outputs``: 2 x action dimension + 1) and ``make_stepper`` for the Trainer."""

    def __init__(self, settings: TaskSettings, algo: str = DEFAULT_ALGO, **options: Any) -> None:
        from hesscale.experiments.rl.envs import make_env

        if not settings.name.startswith(PREFIX) or len(settings.name) == len(PREFIX):
            raise ValueError(f"An RL task is named rl:<gymnasium id>, not {settings.name!r}.")
        self.env_id = settings.name[len(PREFIX) :]
        self.seed = settings.seed
        self.algo = algo
        self.options = algorithm_options(algo, options)
        env = make_env(self.env_id)
        self.facts = {
            "env_id": self.env_id,
            "obs_dim": env.observation_space.shape[0],
            "act_dim": env.action_space.shape[0],
            "max_episode_steps": env.spec.max_episode_steps if env.spec else None,
        }
        env.close()
        self.input_shape = (self.facts["obs_dim"],)
        self.n_outputs = 2 * self.facts["act_dim"] + 1

    def describe(self) -> dict[str, Any]:
        return {**self.facts, "algo": self.algo, "algo_options": self.options}

    def make_stepper(
        self, model: nn.Module, learner: Learner, device: torch.device
    ) -> OnPolicyLearning:
        """PPO or A2C on this environment with ``model`` and ``learner`` (rebuilt over the
        model's parameter groups, if it has them: actor and critic)."""
        from hesscale.experiments.learners import Learner
        from hesscale.experiments.rl.algorithms import ALGORITHMS
        from hesscale.experiments.rl.envs import Environment
        from hesscale.experiments.rl.update import check_learner

        _check_actor_critic(model, self.input_shape, self.facts["act_dim"])
        if callable(getattr(model, "param_groups", None)):
            learner = Learner(
                learner.spec, model.param_groups(), label=learner.name, **learner.hyperparameters
            )
        check_learner(learner, self.options["max_grad_norm"])
        env = Environment(
            self.env_id,
            seed=self.seed,
            gamma=self.options["gamma"],
            normalize_obs=self.options["normalize_obs"],
            normalize_reward=self.options["normalize_reward"],
        )
        return ALGORITHMS[self.algo](env, model, learner, self.options)


def _check_actor_critic(model: nn.Module, input_shape: tuple[int, ...], act_dim: int) -> None:
    """ComponentError unless ``model(obs)`` gives (mean, log_std, value) of the right shapes."""
    with torch.no_grad():
        outputs = model(torch.zeros(2, *input_shape))
    shapes = [tuple(o.shape) for o in outputs] if isinstance(outputs, tuple | list) else None
    if shapes != [(2, act_dim), (2, act_dim), (2,)]:
        raise ComponentError(
            f"An RL task needs an actor-critic network whose forward(obs) returns (mean, "
            f"log_std, value) of shapes (N, {act_dim}), (N, {act_dim}), (N,) (e.g. "
            f"actor_critic_tanh); this network returned "
            f"{shapes if shapes is not None else type(outputs).__name__}."
        )
