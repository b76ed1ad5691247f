"""RL's entries in the experiments' registries: the task family ``rl:*``, the actor-critic
networks and the plots of RL runs.

A built-in plugin (``hesscale.experiments.components.BUILTIN_PLUGINS``): the registries load it
on first use, so that dependencies run one way, from RL to the core modules, which never import
it. Nothing here imports gymnasium.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hesscale.experiments.networks import NETWORKS, NetworkFactory
from hesscale.experiments.plot import register_group_plotter
from hesscale.experiments.tasks import TASKS, TaskSettings


def _actor_critic(activation_name: str, shared: bool) -> NetworkFactory:
    def build(input_shape, n_outputs, hidden=(64, 64)):
        from hesscale.experiments.rl.policy import actor_critic

        return actor_critic(input_shape, n_outputs, hidden, activation_name, shared)

    trunks = "one trunk with three heads" if shared else "separate actor and critic MLPs"
    build.__doc__ = (
        f"RL tasks (rl:...): a Gaussian actor-critic, {activation_name}, {trunks}, hidden "
        "64-64 unless given; outputs (mean, log_std, value) (hesscale.experiments.rl.policy)."
    )
    return build


for _activation in ("tanh", "relu"):
    NETWORKS.register(
        f"actor_critic_{_activation}", _actor_critic(_activation, False), builtin=True
    )
    NETWORKS.register(
        f"actor_critic_{_activation}_shared", _actor_critic(_activation, True), builtin=True
    )


def reinforcement_learning(settings: TaskSettings, /, **options: Any) -> Any:
    """rl:<gymnasium id>: PPO (or A2C: algo='a2c') on a gymnasium environment with continuous
    actions; options as hesscale.experiments.rl.options.OPTIONS (needs the rl extra)."""
    from hesscale.experiments.rl.task import RLTask

    return RLTask(settings, **options)


def _check_rl_options(options: dict[str, Any]) -> None:
    from hesscale.experiments.rl.task import check_options

    check_options(options)


reinforcement_learning.check_options = _check_rl_options  # type: ignore[attr-defined]
TASKS.register("rl:*", reinforcement_learning, builtin=True)


def plot_rl_group(learners: dict, title: str, out_dir: Path, tag: str) -> tuple[list[Path], str]:
    """Returns instead of losses (hesscale.experiments.rl.plot)."""
    from hesscale.experiments.rl.plot import plot_group

    return plot_group(learners, title, out_dir, tag)


register_group_plotter("rl:", plot_rl_group)
