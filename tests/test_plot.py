"""`hesscale plot` on hand-written logs: what is pooled, what is told apart, how it reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hesscale import cli
from hesscale.experiments.logs import run_path, write_json_atomic
from hesscale.experiments.plot import Config, collect, identical_to


def write_log(root: Path, learner: str, lr: float, seed: int, steps: int, loss: list[float]):
    hyper = {"lr": lr, "beta2": 0.99} if learner == "adam" else {"lr": lr}
    config = {"task": "digits", "network": "fc_relu_small", "learner": learner, "lr": lr}
    config |= {"seed": seed, "steps": steps, "batch_size": 8, "bin_size": 25}
    log = {
        "status": "finished",
        "task": {"name": "digits"},
        "network": "fc_relu_small",
        "learner": learner,
        "hyperparameters": hyper,
        "seed": seed,
        "steps": steps,
        "bin_size": config["bin_size"],
        "bin_ends": [config["bin_size"] * (i + 1) for i in range(len(loss))],
        "loss": loss,
        "accuracy": [0.5] * len(loss),
        "config": config,
    }
    write_json_atomic(run_path(root, learner, hyper, seed), log)


def test_runs_with_other_settings_are_never_pooled_as_seeds(tmp_path, capsys):
    for seed in (0, 1):
        write_log(tmp_path / "short", "sgd", 0.1, seed, 50, [2.0, 1.0])
        write_log(
            tmp_path / "long", "sgd", 0.1, seed, 200, [2.0, 1.8, 1.6, 1.4, 1.2, 1.0, 0.8, 0.6]
        )
    groups = collect(tmp_path)
    assert len(groups) == 2
    for learners in groups.values():
        (config,) = learners["sgd"]
        assert len(config.logs) == 2  # the two seeds, never the other setting's runs
        assert len({log["steps"] for log in config.logs}) == 1
    assert cli.main(["plot", str(tmp_path), "--out", str(tmp_path / "plots")]) == 0
    names = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert names == [
        "curves_digits_fc_relu_small__steps200.png",
        "curves_digits_fc_relu_small__steps50.png",
        "sensitivity_digits_fc_relu_small__steps200.png",
        "sensitivity_digits_fc_relu_small__steps50.png",
    ]
    summary = (tmp_path / "plots" / "summary.md").read_text()
    assert "### digits, fc_relu_small (steps=50)" in summary
    assert "### digits, fc_relu_small (steps=200)" in summary


def test_the_same_run_twice_is_refused(tmp_path, capsys):
    write_log(tmp_path / "a", "sgd", 0.1, 0, 50, [2.0, 1.0])
    write_log(tmp_path / "b", "sgd", 0.1, 0, 50, [2.0, 1.0])
    with pytest.raises(ValueError, match="are the same run"):
        collect(tmp_path)
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "are the same run (seed 0)" in capsys.readouterr().err


def test_coinciding_curves_are_found_and_labels_read_like_arguments(tmp_path):
    for learner in ("adahesscale", "adahesscalegn", "adam"):
        loss = [2.0, 1.0] if learner != "adam" else [2.0, 1.2]
        for seed in (0, 1):
            write_log(tmp_path, learner, 0.01, seed, 50, loss)
    (learners,) = collect(tmp_path).values()
    tops = {learner: configs[0] for learner, configs in learners.items()}
    assert identical_to(tops) == {"adahesscalegn": "adahesscale"}
    assert tops["adam"].label() == "adam (lr=0.01, beta2=0.99)"
    assert cli.main(["plot", str(tmp_path), "--out", str(tmp_path / "plots")]) == 0
    summary = (tmp_path / "plots" / "summary.md").read_text()
    assert "| lr=0.01, beta2=0.99 |" in summary and "lr_0.01" not in summary


def test_same_results_compares_seed_by_seed():
    def config(losses):
        logs = [{"seed": s, "loss": loss, "accuracy": [0.5]} for s, loss in enumerate(losses)]
        return Config("x", {"lr": 0.1}, logs)

    assert config([[1.0], [2.0]]).same_results(config([[1.0], [2.0]]))
    assert not config([[1.0], [2.0]]).same_results(config([[2.0], [1.0]]))
    assert not config([[1.0]]).same_results(config([[1.0], [2.0]]))


def test_task_and_network_options_tell_runs_apart_and_logs_without_them_pool(tmp_path):
    for seed, options in ((0, None), (1, {})):  # a log from before options, and one after
        write_log(tmp_path / "a", "sgd", 0.1, seed, 50, [2.0, 1.0])
        if options is not None:
            path = run_path(tmp_path / "a", "sgd", {"lr": 0.1}, seed)
            log = json.loads(path.read_text())
            log["config"] |= {"task_options": options, "network_options": options}
            write_json_atomic(path, log)
    write_log(tmp_path / "b", "sgd", 0.1, 0, 50, [2.0, 1.0])
    path = run_path(tmp_path / "b", "sgd", {"lr": 0.1}, 0)
    log = json.loads(path.read_text())
    log["config"]["network_options"] = {"width": 8}
    write_json_atomic(path, log)
    groups = collect(tmp_path)
    sizes = sorted(len(learners["sgd"][0].logs) for learners in groups.values())
    assert sizes == [1, 2]  # the two seeds of "a" pool; "b" has another network option


@pytest.mark.parametrize("count", [4, 12])
def test_step_size_tick_labels_are_short_and_never_overlap(count):
    """Issue 17: with more than 8 step sizes the sensitivity plot's x labels piled up
    ("0.0000000039..."), and the y labels overlapped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hesscale.experiments.plot_style import plain_log_ticks

    lrs = [3.9e-9 * 10 ** (9 * i / (count - 1)) for i in range(count)]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(lrs, [10 ** (i % 5) * 0.37 for i in range(count)], "o")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_ticks(ax.xaxis, lrs if count <= 8 else None)
    plain_log_ticks(ax.yaxis)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for axis in (ax.xaxis, ax.yaxis):
        low, high = sorted(axis.get_view_interval())
        shown = [
            tick.label1
            for tick in axis.get_major_ticks() + axis.get_minor_ticks()
            if tick.label1.get_visible()
            and tick.label1.get_text()
            and low * 0.999 <= tick.get_loc() <= high * 1.001
        ]
        texts = [label.get_text() for label in shown]
        assert len(shown) >= 3, texts
        assert all(len(text) <= 7 for text in texts), texts
        boxes = [label.get_window_extent(renderer) for label in shown]
        for i, box in enumerate(boxes):
            assert not any(box.overlaps(other) for other in boxes[i + 1 :]), texts
    plt.close(fig)
