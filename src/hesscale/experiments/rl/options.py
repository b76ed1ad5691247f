"""The options of the RL algorithms (task options of rl:... tasks: ``--task-opt KEY=VALUE``),
with their defaults, and their checks."""

from __future__ import annotations

import math
from typing import Any

COMMON_OPTIONS: dict[str, Any] = {
    "gamma": 0.99,
    "vf_coef": 0.5,
    "ent_coef": 0.0,
    "normalize_obs": True,
    "normalize_reward": True,
    "max_grad_norm": None,
}
OPTIONS: dict[str, dict[str, Any]] = {
    "ppo": {
        "rollout_steps": 2048,
        "minibatches": 32,
        "epochs": 10,
        "gae_lambda": 0.95,
        "clip": 0.2,
        "normalize_advantages": True,
        **COMMON_OPTIONS,
    },
    "a2c": {"rollout_steps": 5, **COMMON_OPTIONS},
}


def algorithm_options(algo: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """The options of ``algo``: its defaults updated with ``given``, each checked."""
    if algo not in OPTIONS:
        raise ValueError(
            f"RL task option algo={algo!r}: use one of {', '.join(OPTIONS)} (--task-opt algo=...)."
        )
    unknown = sorted(set(given) - set(OPTIONS[algo]))
    if unknown:
        raise ValueError(
            f"RL task (algo={algo}) has no option {', '.join(map(repr, unknown))}. Its "
            f"options (and defaults): "
            f"{', '.join(f'{k}={v!r}' for k, v in OPTIONS[algo].items())}."
        )
    options = {**OPTIONS[algo], **given}
    for key, value in options.items():
        _check_option(algo, key, value)
    if algo == "ppo" and options["rollout_steps"] < 2 * options["minibatches"]:
        raise ValueError(
            f"RL task (algo=ppo): rollout_steps ({options['rollout_steps']}) must hold at "
            f"least two transitions per mini-batch (minibatches={options['minibatches']})."
        )
    return options


def _check_option(algo: str, key: str, value: Any) -> None:
    def bad(rule: str) -> ValueError:
        return ValueError(f"RL task (algo={algo}): invalid {key}={value!r}; {rule}.")

    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key in ("rollout_steps", "minibatches", "epochs"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad("need an integer >= 1")
    elif key in ("gamma", "gae_lambda"):
        if not number or not 0 <= value <= 1:
            raise bad("need a number in [0, 1]")
    elif key in ("clip", "vf_coef", "ent_coef"):
        if not number or not math.isfinite(value) or value < 0:
            raise bad("need a finite number >= 0")
    elif key == "max_grad_norm":
        if value is not None and (not number or not math.isfinite(value) or value <= 0):
            raise bad("need a number > 0 (or leave it out: no clipping)")
    elif not isinstance(value, bool):
        raise bad("need True or False")
