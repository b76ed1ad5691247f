"""RL runs in the experiment framework: ``hesscale run --task rl:<gymnasium id> --algo ppo ...``.

What ``hesscale run`` (hesscale.experiments.run) asks of an RL task: its settings checked
(``check_config``) and its Trainer (``rl_trainer``). For an RL task:

- ``--steps`` and ``--bin-size`` count environment steps, rounded down to whole rollouts (one
  Trainer step is one rollout and the updates on it); ``--batch-size`` and ``--change-freq``
  do not apply;
- ``--network`` is one of hesscale.experiments.rl.policy.NETWORKS, hidden sizes 64,64 unless
  ``--hidden``;
- ``--algo`` is ppo or a2c and ``--algo-opt KEY=VALUE`` sets its options
  (hesscale.experiments.rl.options.OPTIONS holds them with their defaults);
- runs use the CPU (networks this small gain nothing from a GPU).

Resuming a preempted run restores the networks, the optimizer, the normalisers' statistics,
the episode log, the step counters and every random generator (torch's, Python's, NumPy's and
the environment's). The simulator's state cannot be saved, so the episode that was running
when the run stopped is dropped and a new one starts: the continuation is a valid run, and the
same one every time it resumes from that checkpoint, but not identical to an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hesscale.experiments.rl.options import algorithm_options
from hesscale.experiments.trainer import StopFlag, Trainer

if TYPE_CHECKING:
    from hesscale.experiments.run import RunConfig

PREFIX = "rl:"


def is_rl_task(task: str) -> bool:
    return task.startswith(PREFIX)


def env_id_of(task: str) -> str:
    return task[len(PREFIX) :]


def check_config(config: RunConfig) -> None:
    """Raise ValueError for RL settings that cannot run (the environment is made once to check
    that it exists and has continuous actions); MissingExtraError without gymnasium/mujoco."""
    from hesscale.experiments.rl.envs import make_env
    from hesscale.experiments.rl.policy import check_network

    options = algorithm_options(config.algo, config.algo_options)
    check_network(config.network, config.hidden)
    if config.eval_every is not None:
        raise ValueError(
            "--eval-every does not apply to RL tasks: their logs hold the return of every "
            "training episode."
        )
    if config.device not in ("auto", "cpu"):
        raise ValueError(f"RL runs use the CPU (--device cpu or auto), not {config.device!r}.")
    if isinstance(config.steps, int) and config.steps < options["rollout_steps"]:
        raise ValueError(
            f"--steps counts environment steps for RL tasks: at least one rollout "
            f"({options['rollout_steps']}), got {config.steps}."
        )
    make_env(env_id_of(config.task)).close()
    _check_learner(config, options)


def _check_learner(config: RunConfig, options: dict[str, Any]) -> None:
    from hesscale.experiments.learners import Learner
    from hesscale.experiments.rl.update import check_learner

    learner = Learner(
        config.learner, [torch.nn.Parameter(torch.zeros(1))], **config.all_hyperparameters()
    )
    check_learner(learner, options["max_grad_norm"])


def rl_trainer(
    config: RunConfig,
    *,
    progress: bool = True,
    stop: StopFlag | None = None,
    checkpoint: Path | None = None,
) -> Trainer:
    """The Trainer of an RL ``config``: environment, policy and learner seeded by its seed."""
    from hesscale.experiments.learners import Learner
    from hesscale.experiments.rl.algorithms import ALGORITHMS
    from hesscale.experiments.rl.envs import Environment
    from hesscale.experiments.rl.policy import build_policy

    options = algorithm_options(config.algo, config.algo_options)
    torch.manual_seed(config.seed)
    env = Environment(
        env_id_of(config.task),
        seed=config.seed,
        gamma=options["gamma"],
        normalize_obs=options["normalize_obs"],
        normalize_reward=options["normalize_reward"],
    )
    policy = build_policy(config.network, env.obs_dim, env.act_dim, config.hidden)
    learner = Learner(config.learner, policy.param_groups(), **config.all_hyperparameters())
    per_step = options["rollout_steps"]
    header = {
        "task": {"name": config.task, **env.describe()},
        "network": config.network,
        "learner": config.label or config.learner,
        "optimizer": config.learner,
        "hyperparameters": config.all_hyperparameters(),
        "seed": config.seed,
        "algo": config.algo,
        "algo_options": options,
        "env_steps_per_step": per_step,
        "config": asdict(config),
    }
    return Trainer(
        ALGORITHMS[config.algo](env, policy, learner, options),
        steps=config.steps // per_step,
        bin_size=max(1, config.bin_size // per_step),
        header=header,
        experiment=config.experiment(),
        device=torch.device("cpu"),
        checkpoint=checkpoint,
        stop=stop,
        progress=progress,
        description=f"{config.algo} {config.label or config.learner} lr={config.lr:g} "
        f"seed={config.seed}",
    )
