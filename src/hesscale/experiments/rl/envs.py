"""Environments: gymnasium (continuous actions) behind the small interface the algorithms use,
with the normalisations, the episode log and the state that a checkpoint keeps.

gymnasium, and mujoco for the MuJoCo tasks, come with hesscale's ``rl`` extra; nothing here is
imported unless an RL run is made.
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hesscale.errors import MissingExtraError
from hesscale.experiments.rl.normalize import ObservationNormalizer, RewardScaler

INSTALL = 'pip install "hesscale[rl]" (from a checkout: pip install -e ".[rl]")'


def require(module: str, purpose: str = "reinforcement learning") -> Any:
    """Import ``module`` of the ``rl`` extra, or raise MissingExtraError saying how to get it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise MissingExtraError(
            f"{purpose} needs {module}, from hesscale's 'rl' extra: {INSTALL}", name=module
        ) from error


def make_env(env_id: str):
    """``gymnasium.make(env_id)``, checked: continuous (Box) actions and flat observations."""
    gym = require("gymnasium")
    try:
        env = gym.make(env_id, disable_env_checker=True)
    except gym.error.DependencyNotInstalled as error:
        raise MissingExtraError(
            f"The environment {env_id} needs a package that is not installed ({error}). The "
            f"MuJoCo tasks need mujoco, from hesscale's 'rl' extra: {INSTALL}",
            name="mujoco",
        ) from error
    except (gym.error.Error, ImportError) as error:
        raise ValueError(f"No gymnasium environment '{env_id}': {error}") from None
    action, observation = env.action_space, env.observation_space
    if not isinstance(action, gym.spaces.Box) or len(action.shape) != 1:
        env.close()
        raise ValueError(
            f"{env_id} has {type(action).__name__} actions; the RL tasks need continuous "
            "actions (a 1-D Box), e.g. Pendulum-v1, InvertedPendulum-v5, Hopper-v5."
        )
    if not isinstance(observation, gym.spaces.Box) or len(observation.shape) != 1:
        env.close()
        raise ValueError(f"{env_id}: the RL tasks need flat (1-D Box) observations.")
    return env


@dataclass
class Transition:
    """What one environment step returns to the algorithm (observations normalized, reward
    scaled). ``final_observation`` is the episode's last observation when it was truncated
    (the bootstrap state), else None."""

    observation: Tensor  # the next observation the policy acts on (a new episode's first)
    reward: float
    terminated: bool
    truncated: bool
    final_observation: Tensor | None


class Environment:
    """One gymnasium environment, stepped by an algorithm: actions clipped to the action
    space's bounds, observations normalized and rewards scaled (``normalize_obs``,
    ``normalize_reward``; see hesscale.experiments.rl.normalize), episodes restarted when they
    end, and every finished episode's undiscounted return and length logged in ``episodes``
    with the environment step it ended at."""

    def __init__(
        self,
        env_id: str,
        seed: int,
        gamma: float,
        normalize_obs: bool = True,
        normalize_reward: bool = True,
    ) -> None:
        self.env = make_env(env_id)
        self.env_id = env_id
        self.obs_dim = self.env.observation_space.shape[0]
        self.act_dim = self.env.action_space.shape[0]
        self.low, self.high = self.env.action_space.low, self.env.action_space.high
        self.normalize_obs = ObservationNormalizer((self.obs_dim,)) if normalize_obs else None
        self.scale_reward = RewardScaler(gamma) if normalize_reward else None
        self.env_steps = 0
        self.episodes: dict[str, list] = {"env_steps": [], "return": [], "length": []}
        self._episode_return, self._episode_length = 0.0, 0
        self.observation = self._observe(self.env.reset(seed=seed)[0])

    def _observe(self, observation: np.ndarray) -> Tensor:
        observation = np.asarray(observation, dtype=np.float64)
        if self.normalize_obs is not None:
            observation = self.normalize_obs(observation)
        return torch.as_tensor(observation, dtype=torch.float32)

    def step(self, action: np.ndarray) -> Transition:
        """Act (clipped to the bounds); start a new episode if this one ended."""
        observation, reward, terminated, truncated, _ = self.env.step(
            np.clip(action, self.low, self.high)
        )
        reward = float(reward)
        self.env_steps += 1
        self._episode_return += reward
        self._episode_length += 1
        ended = terminated or truncated
        if self.scale_reward is not None:
            reward = self.scale_reward(reward, ended)
        next_observation = self._observe(observation)
        final = next_observation if truncated and not terminated else None
        if ended:
            self.episodes["env_steps"].append(self.env_steps)
            self.episodes["return"].append(self._episode_return)
            self.episodes["length"].append(self._episode_length)
            self._episode_return, self._episode_length = 0.0, 0
            next_observation = self._observe(self.env.reset()[0])
        self.observation = next_observation
        return Transition(next_observation, reward, bool(terminated), bool(truncated), final)

    # checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Normalisers, counters, the episode log and random states (this environment's, and
        Python's and NumPy's global ones). The simulator's own state is not saved (gymnasium
        environments cannot be saved in general): see ``load_state_dict``."""
        return {
            "env_steps": self.env_steps,
            "episodes": {k: list(v) for k, v in self.episodes.items()},
            "normalize_obs": self.normalize_obs.state_dict() if self.normalize_obs else None,
            "scale_reward": self.scale_reward.state_dict() if self.scale_reward else None,
            "env_rng": self.env.unwrapped.np_random.bit_generator.state,
            "python_rng": _python_rng_state(),
            "numpy_rng": _numpy_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the episode that was running when it was saved is lost
        (neither logged nor continued); a new one starts, drawn from the saved generator."""
        self.env_steps = state["env_steps"]
        self.episodes = {k: list(v) for k, v in state["episodes"].items()}
        if self.normalize_obs is not None:
            self.normalize_obs.load_state_dict(state["normalize_obs"])
        if self.scale_reward is not None:
            self.scale_reward.load_state_dict(state["scale_reward"])
            self.scale_reward.discounted_return = 0.0  # a new episode starts
        random.setstate(_to_tuples(state["python_rng"]))
        np.random.set_state(_numpy_rng_from(state["numpy_rng"]))
        generator = np.random.Generator(np.random.PCG64())
        generator.bit_generator.state = state["env_rng"]
        self.env.unwrapped.np_random = generator
        self._episode_return, self._episode_length = 0.0, 0
        self.observation = self._observe(self.env.reset()[0])

    def close(self) -> None:
        self.env.close()


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _to_tuples(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _numpy_rng_state() -> list:
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss]


def _numpy_rng_from(state: list) -> tuple:
    name, keys, position, has_gauss, gauss = state
    return (name, keys.numpy().astype(np.uint32), position, has_gauss, gauss)
