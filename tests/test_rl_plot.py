"""hesscale plot on RL logs (synthetic, no environment needed): best configuration = highest
average return, final return, empty bins, diverged runs, files written."""

from __future__ import annotations

import json
import math

import pytest

from hesscale.experiments.plot import collect, plot_all
from hesscale.experiments.rl.plot import RLConfig, as_rl, best, filled_returns, summary_rows


def log(learner, lr, seed, returns, status="finished"):
    return {
        "status": status,
        "task": {"name": "rl:Fake-v0"},
        "network": "actor_critic_tanh",
        "learner": learner,
        "hyperparameters": {"lr": lr},
        "seed": seed,
        "config": {"steps": 40, "bin_size": 10, "task_options": {"algo": "ppo"}},
        "bin_ends": list(range(1, len(returns) + 1)),
        "env_steps_per_step": 10,
        "return": returns,
    }


def write(root, logs):
    for i, entry in enumerate(logs):
        path = root / f"{entry['learner']}_{entry['hyperparameters']['lr']}_{i}.json"
        path.write_text(json.dumps(entry))


def test_filled_returns_repeat_the_last_value_over_empty_bins():
    assert filled_returns(log("a", 1, 0, [None, -5.0, None, -3.0]))[1:].tolist() == [-5, -5, -3]
    assert math.isnan(filled_returns(log("a", 1, 0, [None, -5.0]))[0])


def test_best_has_the_highest_average_return_and_a_diverged_seed_disqualifies(tmp_path):
    write(
        tmp_path,
        [
            log("adam", 0.01, 0, [-500.0, -400.0, -300.0, -200.0]),
            log("adam", 0.01, 1, [-520.0, None, -320.0, -220.0]),
            log("adam", 0.1, 0, [-100.0, -50.0, -40.0, -30.0]),
            log("adam", 0.1, 1, [-90.0, -60.0, -40.0, -20.0], status="diverged"),
            log("sgd", 0.1, 0, [-900.0, -800.0, -700.0, -600.0]),
        ],
    )
    groups = collect(tmp_path)
    (learners,) = groups.values()
    rl = as_rl(learners)
    assert best(rl["adam"]).hyperparameters == {"lr": 0.01}  # 0.1 had a diverged seed
    rows = {r["learner"]: r for r in summary_rows(rl)}
    # seed 1: bins [-520, -520, -320, -220] (the empty bin repeats the previous)
    assert rows["adam"]["avg_return"][0] == pytest.approx((-350.0 + -395.0) / 2)
    assert rows["adam"]["final_return"][0] == pytest.approx((-200.0 + -220.0) / 2)
    assert rows["adam"]["diverged_configs"] == 1 and rows["sgd"]["avg_return"][0] == -750.0
    assert isinstance(best(rl["sgd"]), RLConfig)

    written = plot_all(tmp_path)
    names = {p.name for p in written}
    assert {"returns_rl_Fake-v0_actor_critic_tanh.png", "summary.md"} <= names
    assert all(p.is_file() for p in written)
    table = (tmp_path / "plots" / "summary.md").read_text()
    assert table.index("| adam |") < table.index("| sgd |")  # best first
