"""Experiments: tasks, networks, learners, runs, sweeps (local and SLURM) and plots, on digits."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hesscale import cli
from hesscale.experiments.learners import LEARNERS, Learner
from hesscale.experiments.logs import read_log
from hesscale.experiments.networks import NETWORKS, build_network
from hesscale.experiments.run import RunConfig, run_and_log, train
from hesscale.experiments.supervised import SupervisedLearning
from hesscale.experiments.sweep import plan as sweep_plan
from hesscale.experiments.sweep import spec as sweep_spec
from hesscale.experiments.tasks import DatasetNotFoundError, Task

PYTHON_CLI = f"{sys.executable} -m hesscale.cli"

TINY_SPEC = """
name = "tiny"
task = "digits"
network = "fc_relu_small"
hidden = [16]
steps = {steps}
batch_size = 8
bin_size = 20
seeds = 2

[learners.sgd]
lr = [0.05, 0.2]

[learners.adam]
lr = [0.003, 0.01]
beta2 = 0.99
"""


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


# tasks ----------------------------------------------------------------------------------------


def test_stationary_digits_stream_visits_every_sample_once_per_epoch():
    task = Task("digits", batch_size=1797, seed=3)
    x, y = task.next_batch()
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(torch.sort(y).values, torch.sort(task.dataset.targets).values)


def test_input_permuted_stream_permutes_features_and_changes_every_change_freq_steps():
    task = Task("digits-input-permuted", batch_size=1797, seed=0, change_freq=2)
    original = task.dataset.inputs(torch.arange(1797)).flatten(1).sum(0)
    sums = [task.next_batch()[0].flatten(1).sum(0) for _ in range(3)]
    for s in sums:  # each batch is the whole data set with its pixels permuted
        assert torch.allclose(torch.sort(s).values, torch.sort(original).values)
    assert torch.allclose(sums[0], sums[1])  # same permutation within change_freq steps
    assert not torch.allclose(sums[1], sums[2])  # a new one after


def test_label_permuted_stream_maps_labels_by_a_permutation_that_changes():
    task = Task("digits-label-permuted", batch_size=1797, seed=0, change_freq=2)
    pairs = zip(task.dataset.raw.flatten(1), task.dataset.targets, strict=True)
    true = {tuple(row.tolist()): int(t) for row, t in pairs}
    maps = []
    for _ in range(3):
        x, y = task.next_batch()
        counts = torch.zeros(10, 10)  # true label x shown label
        for row, label in zip((x * 16).round().to(torch.uint8).flatten(1), y, strict=True):
            counts[true[tuple(row.tolist())], label] += 1
        # (a few duplicate images carry two labels, hence "nearly all")
        assert (counts.max(1).values / counts.sum(1) > 0.98).all()
        maps.append(counts.argmax(1).tolist())
    assert sorted(maps[0]) == list(range(10))
    assert maps[0] == maps[1] and maps[1] != maps[2]


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        Task("mnist-input-permuted", data_dir=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "--download" in message


def test_missing_dataset_on_the_command_line_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    """Issue 17: it left a `failed` log behind, where the README says nothing is written."""
    out = tmp_path / "log.json"
    code = run_cli(
        "run", "--task", "cifar10", "--network", "small_cnn", "--learner", "sgd", "--lr", "0.1",
        "--data-dir", str(tmp_path), "--out", str(out), "--no-progress",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "cifar-10-batches-py" in err and "--download" in err and "Traceback" not in err
    assert "DatasetNotFoundError" not in err  # a message, not an exception name
    assert not out.exists() and read_log(out) is None


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ValueError, match="digits-label-permuted"):
        Task("digits-shuffled")


# networks and learners ------------------------------------------------------------------------


CLASSIFIERS = [n for n in NETWORKS if not n.startswith("actor_critic")]  # RL ones: test_rl_*


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_network_maps_task_inputs_to_outputs(name):
    shape = (3, 32, 32) if name.startswith("cifar") else (1, 28, 28)
    net = build_network(name, shape, 7)
    assert net(torch.zeros(2, *shape)).shape == (2, 7)


def test_network_sizes():
    def widths(net):
        return [m.out_features for m in net if isinstance(m, torch.nn.Linear)]

    assert widths(build_network("fc_tanh", (1, 28, 28), 10)) == [300, 150, 10]
    assert widths(build_network("fc_leakyrelu_small", (1, 8, 8), 10)) == [64, 32, 10]
    assert widths(build_network("fc_relu", (1, 8, 8), 4, hidden=[5, 6, 7])) == [5, 6, 7, 4]
    # DeepOBS parameter counts (10 classes for the CIFAR-10 net, 100 for All-CNN-C)
    count = {
        name: sum(p.numel() for p in build_network(name, shape, n).parameters())
        for name, shape, n in [
            ("mnist_2c2d", (1, 28, 28), 10),
            ("cifar10_3c3d", (3, 32, 32), 10),
            ("cifar100_allcnnc", (3, 32, 32), 100),
        ]
    }
    assert count == {"mnist_2c2d": 3274634, "cifar10_3c3d": 895210, "cifar100_allcnnc": 1387108}
    with pytest.raises(ValueError, match="small_cnn"):
        build_network("resnet", (1, 8, 8), 10)


def _shape(name: str) -> tuple[int, ...]:
    return (1, 28, 28) if name.startswith("mnist") else (3, 32, 32)


@pytest.mark.parametrize("name", ["mnist_2c2d", "cifar10_3c3d", "cifar100_allcnnc"])
def test_deepobs_networks_take_an_adahesscale_step(name):
    """AdaHesScale's diagonal comes from hesscale.backward: no backpack.extend."""
    shape = _shape(name)
    torch.manual_seed(0)
    net = build_network(name, shape, 10)
    learner = Learner("adahesscale", net.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in net.parameters()]
    loss_fn = torch.nn.CrossEntropyLoss()
    learner.step(loss_fn(net(torch.randn(2, *shape)), torch.tensor([1, 2])))
    after = list(net.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_learner_options_and_errors():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = Learner("adam", params, lr=0.1, beta2=0.9)
    assert adam.optimizer.param_groups[0]["betas"] == (0.9, 0.9) and not adam.uses_backpack
    with pytest.raises(ValueError, match="accepts: lr"):
        Learner("sgd", params, lr=0.1, beta2=0.9)
    with pytest.raises(ValueError, match="Known learners"):
        Learner("lbfgs", params, lr=0.1)


# runs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["fc_tanh_small", "small_cnn"])
@pytest.mark.parametrize("learner", list(LEARNERS))
def test_every_learner_trains_every_kind_of_network_in_the_one_run_loop(learner, network):
    hidden = [8] if network.startswith("fc") else None
    lr = {"sgd": 0.1, "adahessian": 0.05}.get(learner, 0.003)
    config = RunConfig("digits", network, learner, lr, steps=6, batch_size=4, bin_size=3)
    config.hidden = hidden
    log = train(config, progress=False)
    assert log["status"] == "finished" and log["steps_done"] == 6
    assert all(math.isfinite(v) for v in log["loss"])


def test_run_writes_a_binned_json_log_and_skips_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run.json"
    argv = ["run", "--task", "digits-label-permuted", "--network", "fc_tanh_small", "--hidden"]
    argv += ["16", "--learner", "adam", "--lr", "0.01", "--opt", "eps=1e-6", "--seed", "1"]
    argv += ["--steps", "25", "--bin-size", "10", "--change-freq", "10", "--out", str(out)]
    assert run_cli(*argv, "--no-progress") == 0
    log = json.loads(out.read_text())
    assert log["status"] == "finished" and log["steps_done"] == 25
    assert log["bin_ends"] == [10, 20, 25] and len(log["loss"]) == len(log["accuracy"]) == 3
    assert all(0 < v < 10 for v in log["loss"]) and all(0 <= a <= 1 for a in log["accuracy"])
    assert log["hyperparameters"] == {"lr": 0.01, "eps": 1e-6}
    assert log["task"]["change_freq"] == 10 and log["learner"] == "adam" and log["seed"] == 1
    assert log["version"] and log["wall_time_s"] > 0
    stamp = out.stat().st_mtime_ns
    assert run_cli(*argv, "--no-progress") == 0
    assert "skipped" in capsys.readouterr().out and out.stat().st_mtime_ns == stamp
    # the same place, other settings: refused, the finished log kept
    assert run_cli(*argv[:-2], "--steps", "30", "--out", str(out), "--no-progress") == 2
    err = capsys.readouterr().err
    assert "steps: 25 there, 30 now" in err
    assert "(--out)" in err and "--out-dir" not in err  # an option `hesscale run` has
    assert out.stat().st_mtime_ns == stamp


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST-format (idx, uint8) file, as torchvision reads them."""
    header = struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_data_and_test_split_evaluation(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 30)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    out = tmp_path / "run.json"
    argv = ["run", "--task", "mnist-input-permuted", "--network", "fc_relu_small", "--hidden"]
    argv += ["8", "--learner", "adam", "--lr", "0.01", "--steps", "12", "--batch-size", "8"]
    argv += ["--change-freq", "6", "--eval-every", "5", "--data-dir", str(tmp_path)]
    assert run_cli(*argv, "--out", str(out), "--no-progress") == 0
    log = read_log(out)
    assert log["task"]["n_samples"] == 40 and log["task"]["input_shape"] == [1, 28, 28]
    assert log["test"]["steps"] == [5, 10, 12]
    assert all(0 < v < 20 for v in log["test"]["loss"])
    assert all(a in {k / 30 for k in range(31)} for a in log["test"]["accuracy"])
    assert run_cli("plot", str(tmp_path), "--out", str(tmp_path / "plots")) == 0
    assert "final test accuracy" in (tmp_path / "plots" / "summary.md").read_text()
    # digits has no test split: a clear error, not a silent evaluation on training data
    argv = ["run", "--task", "digits", "--network", "fc_relu_small", "--learner", "sgd"]
    argv += ["--lr", "0.1", "--steps", "5", "--eval-every", "2", "--out", str(tmp_path / "d")]
    assert run_cli(*argv, "--no-progress") == 1
    log = read_log(tmp_path / "d")
    assert "no held-out test split" in log["error"] and "steps_done" not in log


class StopAfter:
    """A stop flag that a scheduler's signal sets after ``n`` steps."""

    def __init__(self, n: int) -> None:
        self.n = n

    @property
    def reason(self) -> str | None:
        self.n -= 1
        return "SIGUSR1" if self.n < 0 else None


@pytest.mark.parametrize("learner", ["adaggnmc", "adam"])
def test_a_preempted_run_continues_from_its_checkpoint_exactly(tmp_path, learner):
    config = RunConfig("digits-input-permuted", "fc_tanh_small", learner, 0.003, steps=23)
    config.hidden, config.batch_size, config.bin_size, config.change_freq = [8], 4, 5, 7
    whole = run_and_log(config, tmp_path / "whole.json", progress=False)
    out = tmp_path / "run.json"
    first = run_and_log(config, out, progress=False, stop=StopAfter(9))
    assert first["status"] == "preempted" and first["steps_done"] == 9
    checkpoint = tmp_path / "run.json.ckpt"
    assert first["checkpoint"] == str(checkpoint) and checkpoint.is_file()
    second = run_and_log(config, out, progress=False, stop=StopAfter(8))
    assert second["steps_done"] == 17 and second["resumed_at_step"] == [9]
    final = run_and_log(config, out, progress=False)
    assert final["status"] == "finished" and final["resumed_at_step"] == [9, 17]
    for key in ("bin_ends", "loss", "accuracy"):  # as if never stopped (adaggnmc draws random
        assert final[key] == whole[key]  # numbers each step; the stream permutes inputs)
    assert not checkpoint.exists()


def test_nan_loss_is_logged_as_divergence_not_a_crash(tmp_path):
    out = tmp_path / "run.json"
    argv = ["run", "--task", "digits", "--network", "fc_relu_small", "--learner", "sgd"]
    argv += ["--lr", "1e30", "--steps", "50", "--bin-size", "5", "--out", str(out)]
    assert run_cli(*argv, "--no-progress") == 0
    log = json.loads(out.read_text())  # strict JSON: no NaN literals
    assert log["status"] == "diverged" and 0 < log["diverged_at_step"] < 50
    assert log["steps_done"] == log["diverged_at_step"]
    assert all(v is None or math.isfinite(v) for v in log["loss"])


# sweeps and plots -----------------------------------------------------------------------------


def _complete_logs(root: Path) -> dict[Path, tuple[int, str]]:
    found = {}
    for path in root.rglob("seed_*.json"):
        log = read_log(path)
        if log and log["status"] in ("finished", "diverged"):
            found[path] = (path.stat().st_mtime_ns, path.read_text())
    return found


@pytest.mark.slow
def test_sweep_is_interrupted_resumed_without_redoing_or_losing_runs_and_plotted(
    tmp_path, capsys, monkeypatch
):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC.format(steps=60))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hesscale.cli", "sweep", str(spec), "--out-dir", str(out)]
    # Ctrl-C arrives in the 30th step of the third run: the same place every time, unlike a
    # SIGINT sent after some time
    steps = itertools.count(1)
    real_step = SupervisedLearning.step

    def step(self):
        if next(steps) == 2 * 60 + 30:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(SupervisedLearning, "step", step)
    assert run_cli(*command[3:], "--jobs", "1", "--no-progress") == 130
    output = capsys.readouterr()
    resume = f"hesscale sweep {spec} --out-dir {out} --jobs 1"
    assert "To resume, run the same command again" in output.err and resume in output.err
    monkeypatch.undo()
    before = _complete_logs(out)
    assert 1 <= len(before) < 8, output
    assert len(before) == 2
    statuses = {read_log(p)["status"] for p in out.rglob("seed_*.json")}
    assert statuses <= {"finished", "interrupted"}
    assert statuses == {"finished", "interrupted"}  # the partial log of the third run
    assert not list(out.rglob("*.tmp")), "a half-written log was left behind"

    capsys.readouterr()
    assert run_cli(*command[3:], "--jobs", "2", "--no-progress") == 0  # a process pool
    resumed = capsys.readouterr().out
    assert f"{len(before)} complete, skipped; running {8 - len(before)}" in resumed
    after = _complete_logs(out)
    assert len(after) == 8
    for path, stamp in before.items():
        assert after[path] == stamp, f"{path} was run again"

    spec.write_text(TINY_SPEC.format(steps=61))  # a changed spec must not mix with old logs
    assert run_cli(*command[3:], "--jobs", "1") == 2
    err = capsys.readouterr().err
    assert "other settings (steps: 60 there, 61 now)" in err and "(--out-dir)" in err

    assert run_cli("plot", str(out)) == 0
    pngs = sorted((out / "plots").glob("*.png"))
    assert [p.name.split("_")[0] for p in pngs] == ["curves", "sensitivity"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    summary = (out / "plots" / "summary.md").read_text()
    assert "| sgd |" in summary and "| adam |" in summary


def _write_sweep(tmp_path: Path, steps: int, *extra: str) -> Path:
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC.format(steps=steps))
    out = tmp_path / "out"
    argv = ["sweep", str(spec), "--out-dir", str(out), "--command-prefix", PYTHON_CLI]
    assert run_cli(*argv, *extra) == 0
    return out


def _catches_usr1(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGUSR1 - 1)))


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_slurm_array_script_runs_the_selected_task_and_requeues_it_on_the_warning_signal(
    tmp_path, capsys
):
    extra = ["--account", "def-someone", "--time", "0:20:00", "--mem", "1G"]
    extra += ["--env", "export HESSCALE_TEST_ENV=1", "--max-parallel", "3"]
    out = _write_sweep(tmp_path, 10**7, *extra)
    script = out / "slurm" / "adam.sh"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "#SBATCH --array=0-3%3" in text and "SLURM_ARRAY_TASK_ID" in text
    assert "#SBATCH --account=def-someone" in text and "#SBATCH --time=0:20:00" in text
    assert "export HESSCALE_TEST_ENV=1" in text and "#SBATCH --signal=B:USR1@120" in text
    submit = (out / "slurm" / "submit_all.sh").read_text()
    assert "sbatch" in submit and str(script) in submit and "sgd.sh" in submit
    lines = (out / "commands" / "adam.txt").read_text().splitlines()
    assert len(lines) == 4 and all(line.startswith(PYTHON_CLI + " run ") for line in lines)

    # array task 2 by hand; SLURM's --signal=B:USR1 warns the script, which tells the run
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_JOB_ID": "7"}
    task = subprocess.Popen(
        ["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline, run = time.time() + 60, None
    while run is None and time.time() < deadline:  # until the run handles the signal
        run = next((c for c in _children(task.pid) if _catches_usr1(c)), None)
        time.sleep(0.02)
    assert run is not None
    task.send_signal(signal.SIGUSR1)
    output, _ = task.communicate(timeout=60)
    assert task.returncode == 3, output  # preempted
    assert "scontrol" in output  # it asked SLURM to requeue it (no SLURM here)
    logs = list((out / "logs").rglob("seed_*.json"))  # only the selected command ran
    assert len(logs) == 1 and logs[0].as_posix().endswith("adam/lr_0.01__beta2_0.99/seed_0.json")
    log = read_log(logs[0])
    assert log["status"] == "preempted" and log["stopped_by"] == "SIGUSR1"
    assert log["steps_done"] < 10**7 and log["command"][:2] == ["hesscale", "run"]
    capsys.readouterr()
    assert run_cli("sweep", str(tmp_path / "tiny.toml"), "--out-dir", str(out), "--status") == 0
    assert "1 preempted run(s) will continue from their checkpoints" in capsys.readouterr().out
    assert (logs[0].parent / "seed_0.json.ckpt").is_file()


def needs_missing_rl_extra(path: Path) -> bool:
    """An RL spec (task rl:...) while the rl extra is not installed: it cannot be loaded."""
    import importlib.util
    import tomllib

    rl = tomllib.loads(path.read_text()).get("task", "").startswith("rl:")
    return rl and importlib.util.find_spec("gymnasium") is None


def test_shipped_specs_load_and_expand():
    specs = sweep_spec.shipped_specs()
    assert {"digits_small", "digits_tanh", "stationary_mnist", "input_permuted_mnist"} <= set(specs)
    assert "label_permuted_emnist" in specs
    for name, path in specs.items():
        if needs_missing_rl_extra(path):
            continue
        spec = sweep_spec.load_spec(path)
        runs = sweep_plan.plan(spec, Path("/tmp/unused"))
        assert sum(len(r) for r in runs.values()) > 0, name
    paper = sweep_spec.load_spec(specs["stationary_mnist"])
    assert {"sgd", "adam", "adahesscale", "adahesscalegn"} <= set(paper["learners"])


def test_sweep_lists_failed_runs_with_their_traceback(tmp_path, capsys):
    spec = tmp_path / "nodata.toml"
    text = (
        TINY_SPEC.format(steps=5).replace('"digits"', '"mnist"').replace("seeds = 2", "seeds = 1")
    )
    spec.write_text(text + '\n[slurm]\ntime = "0:05:00"\n')
    argv = ["sweep", str(spec), "--out-dir", str(tmp_path / "o"), "--data-dir", str(tmp_path)]
    assert run_cli(*argv, "--jobs", "1", "--no-progress", "--learners", "sgd") == 1
    out = capsys.readouterr().out
    assert "2 runs: 2 failed" in out and out.count("FAILED") == 2
    assert "DatasetNotFoundError" in out and "Traceback (most recent call last)" in out


def test_bad_spec_is_a_clear_error(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text(TINY_SPEC.format(steps=5).replace("beta2 = 0.99", "momentum = 0.9"))
    assert run_cli("sweep", str(spec), "--out-dir", str(tmp_path / "o")) == 2
    assert "adam" in capsys.readouterr().err


def test_every_mlp_and_3c3d_is_built_in_networks_py():
    from hesscale.experiments.networks import conv_3c3d, fully_connected

    flat = fully_connected((784,), 10, [5, 4], "tanh")  # the cost and approx-quality MLPs
    assert [type(m).__name__ for m in flat] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    images = fully_connected((1, 8, 8), 10, [5], "leakyrelu")
    assert isinstance(images[0], torch.nn.Flatten) and images[0 + 2].negative_slope == 0.01
    deepobs = build_network("cifar10_3c3d", (3, 32, 32), 10)
    assert str(conv_3c3d((3, 32, 32), 10)) == str(deepobs)
    with pytest.raises(ValueError, match="Unknown activation 'swish'"):
        fully_connected((4,), 2, [3], "swish")


# resnet18 ---------------------------------------------------------------------------------------


def test_resnet18_is_torchvisions_in_its_cifar_form():
    net = build_network("resnet18", (3, 32, 32), 10)
    stem = net.conv1
    assert (stem.in_channels, stem.out_channels, stem.kernel_size) == (3, 64, (3, 3))
    assert stem.stride == (1, 1) and stem.padding == (1, 1) and stem.bias is None
    assert isinstance(net.maxpool, torch.nn.Identity) and net.fc.out_features == 10
    # the CIFAR ResNet-18's published size: 11,173,962 parameters for 10 classes
    assert sum(p.numel() for p in net.parameters()) == 11_173_962
    gray = build_network("resnet18", (1, 28, 28), 47)  # channels and classes from the task
    assert gray.conv1.in_channels == 1 and gray(torch.zeros(2, 1, 28, 28)).shape == (2, 47)
    with pytest.raises(ValueError, match="needs image inputs"):
        build_network("resnet18", (64,), 10)


def test_resnet18_trains_in_the_run_loop():
    config = RunConfig("digits", "resnet18", "sgd", 0.01, steps=2, batch_size=4, bin_size=1)
    log = train(config, progress=False)
    assert log["status"] == "finished" and all(math.isfinite(v) for v in log["loss"])


@pytest.mark.parametrize("learner", ["adahesscale", "adahesscalegn"])
def test_resnet18_takes_adahesscale_steps_from_hesscale_backward(learner):
    """Residual additions and BatchNorm in training mode: no chain of modules, no extend."""
    torch.manual_seed(0)
    net = build_network("resnet18", (3, 8, 8), 10)
    before = [p.detach().clone() for p in net.parameters()]
    opt = Learner(learner, net.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([1, 2, 3, 4])
    opt.step(torch.nn.functional.cross_entropy(net(x), y))
    assert all(
        torch.isfinite(p.hesscale if learner == "adahesscale" else p.hesscale_gn).all()
        for p in net.parameters()
    )
    changed = [not torch.equal(a, b) for a, b in zip(net.parameters(), before, strict=True)]
    assert all(changed)


def test_backpack_learners_refuse_networks_that_are_not_chains(capsys, tmp_path):
    argv = ["run", "--task", "digits", "--network", "resnet18", "--learner", "adaggnmc"]
    argv += ["--lr", "0.001", "--out", str(tmp_path / "log.json"), "--no-progress"]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert "Learner 'adaggnmc' runs BackPACK" in err and "ResNet" in err
    assert "adahesscale" in err and list(tmp_path.iterdir()) == []


# the original study's settings ----------------------------------------------------------------


def test_the_original_studys_specs_follow_its_published_settings():
    specs = sweep_spec.shipped_specs()
    expected = {
        "stationary_mnist": ("mnist", None),
        "input_permuted_mnist": ("mnist-input-permuted", 5000),
        "label_permuted_emnist": ("emnist-label-permuted", 2500),
    }
    for name, (task, change_freq) in expected.items():
        spec = sweep_spec.load_spec(specs[name])
        assert spec["task"] == task and spec.get("change_freq") == change_freq, name
        assert spec["seeds"] == list(range(20)) and spec["steps"] == 1_000_000
        assert spec["batch_size"] == 1 and spec["network"] == "fc_relu" and "hidden" not in spec
        assert spec["task_options"] == {"normalize": "symmetric"}
        assert {"sgd", "adam", "adahesscale", "adahesscalegn"} == set(spec["learners"])
        for grid in spec["learners"].values():
            assert grid == {"lr": [0.1, 0.01, 0.001, 0.0001]}, name
        fine = sweep_spec.load_spec(specs[name + "_fine"])
        assert {k: v for k, v in fine.items() if k not in ("name", "description", "learners")} == {
            k: v for k, v in spec.items() if k not in ("name", "description", "learners")
        }
        for grid in fine["learners"].values():
            assert len(grid["lr"]) == 9 and set(grid["lr"]) > {0.1, 0.01, 0.001, 0.0001}
    widths = [
        m.out_features
        for m in build_network("fc_relu", (1, 28, 28), 10)
        if isinstance(m, torch.nn.Linear)
    ]
    assert widths == [300, 150, 10]


def _fake_torchvision_data(root: Path, folder: str, prefix: str, n_classes: int) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((n_classes, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = 255  # a white pixel in every image, the rest black
    for split in ("train", "t10k" if folder == "MNIST" else "test"):
        _write_idx(raw / f"{prefix}{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}{split}-labels-idx1-ubyte", np.arange(n_classes))


def test_mnist_and_emnist_inputs_lie_in_minus_one_to_one_and_emnist_has_47_classes(tmp_path):
    _fake_torchvision_data(tmp_path, "MNIST", "", 10)
    _fake_torchvision_data(tmp_path, "EMNIST", "emnist-balanced-", 47)
    mnist = Task("mnist-input-permuted", batch_size=10, data_dir=str(tmp_path))
    x, _ = mnist.next_batch()
    assert x.min() == -1 and x.max() == 1 and mnist.change_freq == 5000
    unit = Task("mnist", batch_size=10, data_dir=str(tmp_path), normalize="unit")
    assert unit.next_batch()[0].min() == 0  # DeepOBS's [0, 1]
    emnist = Task("emnist-label-permuted", batch_size=47, data_dir=str(tmp_path))
    assert emnist.n_outputs == 47 and emnist.change_freq == 2500
    x, y = emnist.next_batch()
    assert sorted(y.tolist()) == list(range(47)) and x.min() == -1 and x.max() == 1
