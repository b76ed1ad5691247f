"""AdaHesScale inside Stable-Baselines3 (examples/sb3_adahesscale.py): SB3's A2C and PPO train
with it under ``hesscale.enable()``, and its steps really consume HesScale diagonals (checked:
every step gets one per parameter, the optimizer's curvature average is made of them, and on
SB3's own loss graph the diagonal is the exact one where HesScale is exact). Skipped without
the ``rl`` extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.autograd.functional import hessian

pytest.importorskip("stable_baselines3")

import hesscale  # noqa: E402
from hesscale.errors import HesScaleError  # noqa: E402
from hesscale.optim import AdaHesScale  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sb3_adahesscale.py"


def example():
    spec = importlib.util.spec_from_file_location("sb3_adahesscale", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def recorded(monkeypatch):
    """Every diagonal AdaHesScale.step() consumes, per step: [(param, diagonal), ...]."""
    steps = []
    consume = AdaHesScale._diagonals

    def spy(self, params):
        diagonals = consume(self, params)
        steps.append([(p, h.detach().clone()) for p, h in zip(params, diagonals, strict=True)])
        return diagonals

    monkeypatch.setattr(AdaHesScale, "_diagonals", spy)
    return steps


def check_the_steps_used_the_diagonals(model, steps, n_updates):
    optimizer = model.policy.optimizer
    assert isinstance(optimizer, AdaHesScale)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(steps) == n_updates > 0
    for step in steps:
        assert [p for p, _ in step] == params  # a diagonal for every parameter, every step
        assert all(bool(torch.isfinite(h).all()) for _, h in step)
    for i, p in enumerate(params):  # what the update's curvature average was built from
        assert any(bool(step[i][1].abs().sum() > 0) for step in steps)
        beta2 = optimizer.param_groups[0]["betas"][1]
        v = torch.zeros_like(p)
        for step in steps:
            v = beta2 * v + (1 - beta2) * step[i][1] ** 2
        torch.testing.assert_close(optimizer.state[p]["exp_curvature"], v)
        assert optimizer.state[p]["step"] == n_updates


class Evaluate(torch.nn.Module):
    """SB3's ``policy.evaluate_actions`` as a module's forward (for torch.func.functional_call)."""

    def __init__(self, policy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, observations, actions):
        return self.policy.evaluate_actions(observations, actions)


def a2c_loss_of(model, log_std=None):
    """SB3's A2C loss on the model's last rollout, built with SB3's own policy methods (with
    ``log_std`` in place of the policy's log_std if given)."""
    data = next(model.rollout_buffer.get(batch_size=None))
    evaluate = Evaluate(model.policy)
    replaced = {} if log_std is None else {"policy.log_std": log_std}
    values, log_prob, entropy = torch.func.functional_call(
        evaluate, replaced, (data.observations, data.actions), strict=False
    )
    policy_loss = -(data.advantages * log_prob).mean()
    value_loss = torch.nn.functional.mse_loss(data.returns, values.flatten())
    return policy_loss - model.ent_coef * entropy.mean() + model.vf_coef * value_loss


def test_sb3_a2c_steps_with_the_hesscale_diagonal(recorded):
    model = example().train("a2c", "Pendulum-v1", steps=500, lr=7e-4, delta=None, seed=0)
    check_the_steps_used_the_diagonals(model, recorded, model._n_updates)
    assert model._n_updates == 100  # 500 steps, 5 per update

    # On SB3's A2C loss (linear in log pi), the log-std's diagonal is the exact Hessian one
    log_std = model.policy.log_std
    model.policy.optimizer.zero_grad()
    hesscale.backward(a2c_loss_of(model))
    exact = hessian(lambda x: a2c_loss_of(model, x), log_std.detach().clone()).diagonal()
    torch.testing.assert_close(log_std.hesscale, exact, rtol=1e-4, atol=1e-7)


def test_sb3_without_hesscale_enable_refuses_to_step():
    with pytest.raises(HesScaleError, match=r"hesscale\.enable\(\)"):
        from stable_baselines3 import A2C

        A2C(
            "MlpPolicy",
            "Pendulum-v1",
            policy_kwargs=dict(optimizer_class=AdaHesScale),
            seed=0,
            device="cpu",
        ).learn(total_timesteps=10)


def test_sb3_ppo_steps_with_the_hesscale_diagonal(recorded):
    model = example().train("ppo", "Pendulum-v1", steps=512, lr=3e-4, delta=1e-8, seed=0)
    # SB3 collects whole rollouts: 512 steps ask for one of n_steps=2048, then n_epochs=10
    # passes of 2048/64 = 32 mini-batches
    check_the_steps_used_the_diagonals(model, recorded, model._n_updates * 32)


@pytest.mark.slow
def test_the_example_runs_ppo_as_a_script_for_a_few_thousand_steps():
    import os
    import subprocess
    import sys

    src = str(EXAMPLE.parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--algo", "ppo", "--steps", "3000", "--delta", "1e-8"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert "AdaHesScale took 640 steps" in done.stdout  # 2 rollouts of 2048, 10 x 32 updates
