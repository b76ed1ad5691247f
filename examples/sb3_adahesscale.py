"""AdaHesScale inside Stable-Baselines3, without editing SB3.

SB3's PPO and A2C take the optimizer class in ``policy_kwargs``; their training loop calls
``loss.backward()``, clips the gradient's norm and calls ``optimizer.step()``. Under
``hesscale.enable()`` every ``loss.backward()`` also leaves the HesScale diagonal in each
parameter (``p.hesscale``), which AdaHesScale's ``step()`` uses (and refuses to step without).

    python examples/sb3_adahesscale.py                     # PPO on Pendulum-v1, 20k steps
    python examples/sb3_adahesscale.py --algo a2c --steps 5000 --delta 1e-8

Needs the rl extra: pip install -e ".[rl]".
"""

from __future__ import annotations

import argparse

from stable_baselines3 import A2C, PPO
from stable_baselines3.common.evaluation import evaluate_policy

import hesscale
from hesscale.optim import AdaHesScale

ALGORITHMS = {"ppo": PPO, "a2c": A2C}


def train(algo: str, env: str, steps: int, lr: float, delta: float | None, seed: int):
    """An SB3 model trained ``steps`` environment steps with AdaHesScale; returns it."""
    model = ALGORITHMS[algo](
        "MlpPolicy",
        env,
        learning_rate=lr,
        policy_kwargs=dict(optimizer_class=AdaHesScale, optimizer_kwargs=dict(delta=delta)),
        seed=seed,
        device="cpu",
    )
    with hesscale.enable():  # SB3's loss.backward() now computes the diagonals too
        model.learn(total_timesteps=steps)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", choices=list(ALGORITHMS), default="ppo")
    parser.add_argument("--env", default="Pendulum-v1", help="a gymnasium id (Box actions)")
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--delta", type=float, default=None, help="AdaHesScale's trust region")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = train(args.algo, args.env, args.steps, args.lr, args.delta, args.seed)
    optimizer = model.policy.optimizer
    steps = {state["step"] for state in optimizer.state.values()}
    mean, std = evaluate_policy(model, model.get_env(), n_eval_episodes=5)
    print(f"{args.algo} on {args.env}: {type(optimizer).__name__} took {max(steps)} steps")
    print(f"return after {args.steps} steps: {mean:.1f} +- {std:.1f} (5 episodes)")


if __name__ == "__main__":
    main()
