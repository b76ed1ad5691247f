"""RL runs end to end on tiny rollouts (gymnasium's Pendulum-v1, which needs no MuJoCo): the
environment wrapper, rollouts, every learner, logs, checkpoints and resume, the command line,
sweeps and plots. Skipped without the ``rl`` extra."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("gymnasium")

from hesscale.errors import ComponentError  # noqa: E402
from hesscale.experiments.rl.envs import Environment  # noqa: E402
from hesscale.experiments.rl.policy import actor_critic  # noqa: E402
from hesscale.experiments.rl.rollout import collect  # noqa: E402
from hesscale.experiments.run import RunConfig, build_trainer, run_and_log, train  # noqa: E402
from tests.test_trainer import StopAfter  # noqa: E402

TINY_PPO = {"rollout_steps": 64, "minibatches": 2, "epochs": 2}


def config(**changes) -> RunConfig:
    settings = dict(
        task="rl:Pendulum-v1",
        network="actor_critic_tanh",
        learner="adahesscale",
        lr=1e-3,
        steps=256,
        bin_size=128,
        hidden=[8, 8],
        task_options=dict(TINY_PPO),
    )
    return RunConfig(**{**settings, **changes})


def test_environment_logs_episodes_bootstraps_time_limits_and_normalizes():
    env = Environment("Pendulum-v1", seed=0, gamma=0.99)
    policy = actor_critic((env.obs_dim,), 2 * env.act_dim + 1, hidden=(8,))
    torch.manual_seed(0)
    rollout = collect(env, policy, 250)  # Pendulum's episodes are truncated at 200 steps
    assert env.episodes["env_steps"] == [200] and env.episodes["length"] == [200]
    assert rollout.ends.nonzero().flatten().tolist() == [199] and not rollout.terminated.any()
    # a truncated episode bootstraps from its last observation's value, which is not the
    # value of the next rollout entry (the new episode's first observation)
    assert rollout.next_values[199] != rollout.values[200]
    torch.testing.assert_close(rollout.next_values[:199], rollout.values[1:200])
    stats = env.normalize_obs.stats
    assert stats.count == pytest.approx(252, abs=1e-6)  # 250 steps + 2 resets
    assert rollout.observations.abs().max() <= 10 and rollout.rewards.abs().max() <= 10
    env.close()


def test_environment_state_round_trip_restores_statistics_log_and_generators():
    import random

    import numpy as np

    a = Environment("Pendulum-v1", seed=0, gamma=0.99)
    for _ in range(230):
        a.step(np.array([0.5]))
    random.seed(5)
    np.random.seed(5)
    state = a.state_dict()
    draws = (random.random(), np.random.rand())
    b = Environment("Pendulum-v1", seed=1, gamma=0.99)  # another seed: everything differs
    b.load_state_dict(torch.load(_saved(state), weights_only=True))
    assert (random.random(), np.random.rand()) == draws  # global generators restored
    assert b.env_steps == 230 and b.episodes == a.episodes
    # the statistics continue: a's, plus the new episode's first observation
    assert b.normalize_obs.stats.count == pytest.approx(a.normalize_obs.stats.count + 1)
    np.testing.assert_allclose(b.normalize_obs.stats.var, a.normalize_obs.stats.var, rtol=0.05)
    assert b.scale_reward.stats.var == a.scale_reward.stats.var
    # the new episode is drawn from the saved environment generator: the same in every copy
    c = Environment("Pendulum-v1", seed=2, gamma=0.99)
    c.load_state_dict(torch.load(_saved(state), weights_only=True))
    torch.testing.assert_close(b.observation, c.observation)
    assert b.step(np.array([0.1])).reward == c.step(np.array([0.1])).reward


def _saved(state):
    """``state`` after a round trip through torch.save (as a checkpoint stores it)."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_unknown_or_discrete_environments_fail_the_run_with_their_reason(tmp_path):
    for task, reason in (
        ("rl:Nope-v0", "No gymnasium environment 'Nope-v0'"),
        ("rl:CartPole-v1", "continuous actions"),
    ):
        log = run_and_log(config(task=task), tmp_path / "log.json", progress=False, force=True)
        assert log["status"] == "failed" and reason in log["message"]


@pytest.mark.parametrize(
    ("learner", "hyperparameters", "algo", "network"),
    [
        ("adam", {}, "ppo", "actor_critic_tanh"),
        ("adahesscale", {}, "ppo", "actor_critic_tanh_shared"),
        ("adahesscale", {"delta": 1e-8}, "ppo", "actor_critic_tanh"),
        ("adahesscalegn", {}, "ppo", "actor_critic_tanh"),
        ("adahessian", {}, "ppo", "actor_critic_relu"),
        ("sgd", {}, "a2c", "actor_critic_tanh"),
        ("adahesscale", {}, "a2c", "actor_critic_relu_shared"),
    ],
)
def test_every_learner_trains_each_algorithm(learner, hyperparameters, algo, network):
    options = TINY_PPO if algo == "ppo" else {"rollout_steps": 5}
    run = config(
        learner=learner,
        hyperparameters=hyperparameters,
        network=network,
        task_options={"algo": algo, **options},
    )
    torch.manual_seed(0)
    log = train(run, progress=False)
    assert log["status"] == "finished", log.get("diverged_reason")
    per_step = options["rollout_steps"]
    assert log["env_steps_per_step"] == per_step and log["steps_done"] == 256 // per_step
    assert log["episodes"]["env_steps"] == [200] and len(log["episodes"]["return"]) == 1
    assert log["learner"] == learner and log["task"]["algo"] == algo
    assert all(v is not None for v in log["value_loss"])


def test_hesscale_learners_step_with_the_diagonal_of_the_loss(monkeypatch):
    """The RL update calls hesscale.backward on the loss (for HesScaleGN with the network's
    three outputs), and the optimizer's curvature average holds the squared diagonal."""
    import hesscale

    calls = []
    real = hesscale.backward

    def spy(loss, gn=False, output=None):
        calls.append((gn, None if output is None else len(output)))
        real(loss, gn=gn, output=output)

    monkeypatch.setattr(hesscale, "backward", spy)
    for learner, expected in (("adahesscale", (False, None)), ("adahesscalegn", (True, 3))):
        calls.clear()
        run = config(learner=learner, steps=64, task_options={**TINY_PPO, "epochs": 1})
        trainer = build_trainer(run, progress=False)
        trainer.run()
        assert calls == [expected] * 2  # 1 epoch x 2 mini-batches
        optimizer = trainer.stepper.learner.optimizer
        for p in trainer.stepper.policy.parameters():
            state = optimizer.state[p]
            assert state["step"] == 2 and state["exp_curvature"].abs().sum() > 0


def test_bad_rl_settings_name_what_is_wrong():
    """Option values are refused before anything runs; what needs the built network and
    learner (their kinds, a step count below one rollout) when the run is built."""
    with pytest.raises(ValueError, match="algo='dqn'"):
        config(task_options={"algo": "dqn"}).validate()
    with pytest.raises(ValueError, match="has no option 'lambda'"):
        config(task_options={"lambda": 0.9}).validate()
    with pytest.raises(ValueError, match="invalid gamma=1.5"):
        config(task_options={"gamma": 1.5}).validate()
    with pytest.raises(ValueError, match="two transitions per mini-batch"):
        config(task_options={"rollout_steps": 8, "minibatches": 8}).validate()
    with pytest.raises(ValueError, match=r"less than one step .* \(64 environment steps\)"):
        build_trainer(config(steps=10), progress=False)
    with pytest.raises(ValueError, match="runs BackPACK"):
        build_trainer(config(learner="adaggnmc"), progress=False)
    with pytest.raises(ValueError, match="cannot be clipped"):
        run = config(learner="adahessian", task_options={**TINY_PPO, "max_grad_norm": 0.5})
        build_trainer(run, progress=False)
    with pytest.raises(ComponentError, match="actor-critic network"):
        build_trainer(config(network="fc_tanh_small", hidden=None), progress=False)


def test_gradient_clipping_runs_for_first_and_second_order_learners():
    for learner in ("adam", "adahesscale"):
        run = config(learner=learner, steps=64, task_options={**TINY_PPO, "max_grad_norm": 0.5})
        assert train(run, progress=False)["status"] == "finished"


def test_a_preempted_run_resumes_from_its_checkpoint_the_same_way_every_time(tmp_path):
    """What resume means for RL: networks, optimizer, normalisers, episode log, counters and
    random generators are restored; the running episode is dropped (a new one starts). Two
    resumptions of one checkpoint give the same run."""
    run = config(steps=512)
    checkpoint = tmp_path / "run.ckpt"
    torch.manual_seed(123)
    preempted = train(run, progress=False, stop=StopAfter(4), checkpoint=checkpoint)
    assert preempted["status"] == "preempted" and preempted["steps_done"] == 4
    saved = torch.load(checkpoint, weights_only=True)  # what a resumed run starts from
    env_state = saved["stepper"]["env"]
    assert env_state["env_steps"] == 256 and env_state["episodes"]["env_steps"] == [200]
    assert set(env_state) >= {"normalize_obs", "scale_reward", "env_rng", "python_rng", "numpy_rng"}
    assert saved["stepper"]["optimizer"]["state"]  # the optimizer's moments are saved

    logs = []
    for _ in range(2):
        copy = tmp_path / f"copy{len(logs)}.ckpt"
        copy.write_bytes(checkpoint.read_bytes())
        torch.manual_seed(999)  # overwritten by the checkpoint's generator state
        logs.append(train(run, progress=False, checkpoint=copy))
    first, second = logs
    assert first["status"] == "finished" and first["steps_done"] == 8
    assert first["resumed_at_step"] == [4]
    assert first["episodes"]["env_steps"][0] == 200  # the episodes before the checkpoint
    assert first["episodes"] == second["episodes"]
    for metric in ("return", "value_loss", "policy_loss"):  # repr: NaN (no episode) == NaN
        assert repr(first[metric]) == repr(second[metric])
    # the running episode was dropped: the next one ends 200 steps after the resumption
    assert first["episodes"]["env_steps"][1] == 256 + 200


def test_run_and_log_writes_json_with_the_episodes(tmp_path):
    out = tmp_path / "log.json"
    log = run_and_log(config(), out, progress=False)
    on_disk = json.loads(out.read_text())
    assert on_disk["status"] == "finished" == log["status"]
    assert on_disk["episodes"]["return"] == log["episodes"]["return"]
    assert on_disk["bin_ends"] == [2, 4] and on_disk["return"][0] is None  # no episode yet
    assert on_disk["task"]["env_id"] == "Pendulum-v1" and on_disk["task"]["act_dim"] == 1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    import os
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "hesscale", *args], capture_output=True, text=True, env=env
    )


@pytest.mark.slow
def test_command_line_run_plot_and_bad_settings(tmp_path):
    common = ["--task", "rl:Pendulum-v1", "--network", "actor_critic_tanh", "--steps", "256"]
    common += ["--task-opt", "rollout_steps=64", "--task-opt", "minibatches=2"]
    common += ["--hidden", "8,8", "--no-progress", "--threads", "1"]
    for learner, lr in (("adam", "0.001"), ("adahesscale", "0.001"), ("adahesscale", "0.01")):
        for seed in ("0", "1"):
            out = tmp_path / "logs" / learner / lr / f"seed_{seed}.json"
            done = run_cli("run", *common, "--learner", learner, "--lr", lr, "--seed", seed,
                           "--out", str(out))  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert "last return" in done.stdout
    plotted = run_cli("plot", str(tmp_path / "logs"))
    assert plotted.returncode == 0, plotted.stderr
    plots = tmp_path / "logs" / "plots"
    assert (plots / "returns_rl_Pendulum-v1_actor_critic_tanh.png").is_file()
    assert (plots / "sensitivity_rl_Pendulum-v1_actor_critic_tanh.png").is_file()
    summary = (plots / "summary.md").read_text()
    assert "| adahesscale |" in summary and "average return" in summary

    bad = run_cli("run", *common, "--learner", "adam", "--lr", "0.001", "--task-opt", "clip=-1")
    assert bad.returncode == 2 and "invalid clip=-1" in bad.stderr and "Traceback" not in bad.stderr


def test_a_sweep_spec_plans_rl_runs_with_task_options_and_learner_labels(tmp_path):
    from hesscale.experiments.sweep.plan import check_runs, count_runs, parse_command, plan
    from hesscale.experiments.sweep.spec import load_spec

    spec_path = tmp_path / "rl.toml"
    spec_path.write_text(
        'task = "rl:Pendulum-v1"\nnetwork = "actor_critic_tanh_shared"\nsteps = 256\n'
        "seeds = 2\nhidden = [8]\n"
        'task_options = { algo = "ppo", rollout_steps = 64, minibatches = 2, gamma = 0.95 }\n'
        "[learners.adam]\nlr = [1e-3, 1e-2]\n"
        '[learners.adahesscale_scaled]\nlearner = "adahesscale"\nlr = 0.1\ndelta = 1e-8\n'
    )
    assert count_runs(spec_path) == 6
    runs = plan(load_spec(spec_path), tmp_path / "out")
    check_runs(runs)  # every configuration's settings are valid (and a trial build works)
    config, out = parse_command(runs["adahesscale_scaled"][0].argv)
    assert config.learner == "adahesscale_scaled=adahesscale"
    assert config.hyperparameters == {"delta": 1e-8}
    assert config.task_options == {
        "algo": "ppo",
        "rollout_steps": 64,
        "minibatches": 2,
        "gamma": 0.95,
    }
    assert "/adahesscale_scaled/" in out
    log = run_and_log(config, out, progress=False)
    assert log["learner"] == "adahesscale_scaled" and log["components"]["learner"] == "adahesscale"
    assert log["task"]["algo_options"]["gamma"] == 0.95
    assert log["task"]["algo_options"]["epochs"] == 10  # the defaults fill the rest


def test_shipped_rl_specs_are_valid():
    from hesscale.experiments.sweep.plan import parse_command, plan
    from hesscale.experiments.sweep.spec import find_spec, load_spec, shipped_specs

    names = [n for n in shipped_specs() if n.startswith(("rl_", "paper_"))]
    expected = {"rl_pendulum", "rl_inverted_pendulum", "rl_pendulum_small", "paper_ppo_hopper"}
    assert expected <= set(names)
    for name in names:
        spec = load_spec(find_spec(name))
        runs = plan(spec, __import__("pathlib").Path("/nonexistent"))
        config = parse_command(next(iter(runs.values()))[0].argv)[0]
        config.validate()
        assert config.task.startswith("rl:") and config.network == "actor_critic_tanh"
        assert config.task_options["algo"] in ("ppo", "a2c")
        if name.startswith("paper_"):
            assert set(runs) == {
                "adam", "adahessian", "adahesscale", "adahesscale_scaled", "adahesscalegn",
                "adahesscalegn_scaled",
            }  # fmt: skip
            assert spec["seeds"] == list(range(10)) and config.steps == 1_000_000


def test_the_summary_counts_environment_steps_as_steps_does(tmp_path, capsys):
    """Issue 17: RL runs count --steps in environment steps but printed "finished after 2
    steps" (rollouts)."""
    from hesscale.cli import main

    args = ["run", "--task", "rl:Pendulum-v1", "--network", "actor_critic_tanh", "--steps", "128"]
    args += ["--task-opt", "rollout_steps=64", "--task-opt", "minibatches=2", "--hidden", "4"]
    args += ["--learner", "adam", "--lr", "0.001", "--no-progress", "--out", str(tmp_path / "l")]
    assert main(args) == 0
    assert "finished after 128 environment steps (2 updates)" in capsys.readouterr().out
