"""Experiments with the user's own tasks, networks and learners: by import path (module and
file), through the Python API, in runs, sweeps (here, in a process pool, on SLURM) and plots;
every kind of bad reference refused with a clear message before anything is written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

import hesscale
from hesscale import cli, experiments
from hesscale.errors import ComponentError
from hesscale.experiments.learners import LEARNERS, Learner
from hesscale.experiments.logs import read_log
from hesscale.experiments.networks import NETWORKS
from hesscale.experiments.run import RunConfig, run_and_log
from hesscale.experiments.sweep.spec import SpecError
from hesscale.experiments.tasks import TASKS

PYTHON_CLI = f"{sys.executable} -m hesscale.cli"

USER_CODE = '''
"""A user's own components (written by tests/test_user_components.py)."""
import torch
from torch import nn

from hesscale.experiments import LearnerSpec
from hesscale.experiments.tasks import Stream


def blobs(settings, centers=3):
    """Three Gaussian blobs in 2-D, one class each: a data set of our own."""
    generator = torch.Generator().manual_seed(1000 + settings.seed)
    y = torch.randint(centers, (300,), generator=generator)
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])[:centers]
    x = means[y] + 0.5 * torch.randn(300, 2, generator=generator)
    return Stream.from_tensors(x, y, settings)


class Blobs:
    """The same kind of stream, without state_dict: a preempted run replays it."""

    def __init__(self, settings):
        self.input_shape, self.n_outputs, self.batch_size = (2,), 3, settings.batch_size
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.means = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])

    def next_batch(self):
        y = torch.randint(3, (self.batch_size,), generator=self.generator)
        noise = torch.randn(self.batch_size, 2, generator=self.generator)
        return self.means[y] + 0.5 * noise, y


class TwoLayer(nn.Module):
    """Linear, tanh(h) + 0.1 h (functional: no chain of modules), Linear."""

    def __init__(self, input_shape, n_outputs, width=8):
        super().__init__()
        self.inner = nn.Linear(input_shape[0], width)
        self.outer = nn.Linear(width, n_outputs)

    def forward(self, x):
        h = self.inner(x)
        return self.outer(torch.tanh(h) + 0.1 * h)


class ScaledSGD(torch.optim.Optimizer):
    """p -= lr * g / (|h| + floor), h the HesScaleGN diagonal."""

    def __init__(self, params, lr=0.1, floor=1.0):
        super().__init__(params, {"lr": lr, "floor": floor})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad / (p.hesscale_gn.abs() + group["floor"]))


scaled_sgd = LearnerSpec(ScaledSGD, backward="hesscale_gn")

# objects of the wrong kind
NOT_A_FACTORY = 3
network_instance = nn.Linear(2, 3)
sgd_instance = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


def no_arguments():
    return None


def returns_text(input_shape, n_outputs):
    return "not a network"


def task_returns_tensor(settings):
    return torch.zeros(3)
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A module of the user's own components in tmp_path/code (a fresh name per test), and
    an empty working directory; sys.path and sys.modules as they were afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    code = tmp_path / "code"
    code.mkdir()
    name = f"mycomponents_{uuid.uuid4().hex[:8]}"
    (code / f"{name}.py").write_text(USER_CODE)
    (code / f"broken_{name}.py").write_text("def net(:\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield code, name
    for module in [m for m in sys.modules if name in m]:
        del sys.modules[module]


@pytest.fixture
def registries():
    """Components registered by a test are removed afterwards."""
    before = [(registry, set(registry)) for registry in (TASKS, NETWORKS, LEARNERS)]
    yield
    for registry, names in before:
        for name in set(registry) - names:
            registry.unregister(name)


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# runs ---------------------------------------------------------------------------------------


def test_a_user_task_network_and_learner_run_by_module_path(user_code, capsys):
    code, mod = user_code
    out = Path("run.json")
    argv = ["run", "--task", f"{mod}:blobs", "--task-opt", "centers=3"]
    argv += ["--network", f"{mod}:TwoLayer", "--network-opt", "width=8"]
    argv += ["--learner", f"mine={mod}:scaled_sgd", "--lr", "0.3", "--opt", "floor=0.5"]
    argv += ["--steps", "60", "--batch-size", "8", "--bin-size", "20", "--out", str(out)]
    assert run_cli(*argv, "--pythonpath", str(code), "--no-progress") == 0, capsys.readouterr()
    log = read_log(out)
    assert log["status"] == "finished" and log["learner"] == "mine"
    assert log["components"] == {
        "task": f"{mod}:blobs",
        "network": f"{mod}:TwoLayer",
        "learner": f"{mod}:scaled_sgd",
    }
    assert log["task"]["name"] == f"{mod}:blobs" and log["task"]["n_outputs"] == 3
    assert log["hyperparameters"] == {"lr": 0.3, "floor": 0.5}
    assert log["loss"][-1] < 0.5 * log["loss"][0]  # it learns: the blobs are easy


def test_any_optimizer_class_is_a_learner_and_files_are_found_from_anywhere(user_code, capsys):
    code, mod = user_code
    file = code / f"{mod}.py"
    argv = ["run", "--task", f"{file}:blobs", "--network", f"{file}:TwoLayer"]
    argv += ["--learner", "torch.optim:RMSprop", "--lr", "0.01", "--opt", "alpha=0.9"]
    argv += ["--steps", "20", "--batch-size", "8", "--bin-size", "10", "--no-progress"]
    assert run_cli(*argv) == 0, capsys.readouterr()
    assert "finished after 20 steps" in capsys.readouterr().out
    (log_path,) = files_under(Path("runs"))  # named after the labels, made path-safe
    assert log_path.parts[2] == f"{mod}.py_TwoLayer"
    assert log_path.parts[3] == "torch.optim_RMSprop" and "alpha_0.9" in log_path.parts[4]
    log = read_log(log_path)
    assert log["learner"] == "torch.optim:RMSprop" and log["hyperparameters"]["alpha"] == 0.9


def test_the_learner_runs_the_backward_pass_its_spec_names(user_code, monkeypatch):
    """ScaledSGD's LearnerSpec says hesscale_gn: one step is p - lr g / (|h_gn| + floor) with
    h_gn from hesscale.backward(gn=True) (which differs from HesScale's on this network)."""
    code, mod = user_code
    monkeypatch.syspath_prepend(str(code))
    module = __import__(mod)
    torch.manual_seed(0)
    net = module.TwoLayer((2,), 3, width=4)
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 2, 1, 0])

    def loss():
        return torch.nn.functional.cross_entropy(net(x), y)

    hesscale.backward(loss(), gn=True)
    expected = [p - 0.2 * p.grad / (p.hesscale_gn.abs() + 0.5) for p in net.parameters()]
    gn = [p.hesscale_gn.clone() for p in net.parameters()]
    net.zero_grad()
    hesscale.backward(loss())
    assert any(not torch.allclose(h, p.hesscale) for h, p in zip(gn, net.parameters(), strict=True))
    net.zero_grad()
    learner = Learner(module.scaled_sgd, net.parameters(), lr=0.2, floor=0.5)
    learner.step(loss())
    for p, e in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e.detach(), rtol=1e-6, atol=1e-7)


def test_a_task_without_state_dict_continues_exactly_after_preemption(user_code, tmp_path):
    code, mod = user_code

    class StopAfter:
        def __init__(self, n: int) -> None:
            self.n = n

        @property
        def reason(self):
            self.n -= 1
            return "SIGUSR1" if self.n < 0 else None

    config = RunConfig(f"{mod}:Blobs", f"{mod}:TwoLayer", "adahesscale", 0.01, steps=17)
    config.batch_size, config.bin_size, config.pythonpath = 4, 5, [str(code)]
    whole = run_and_log(config, tmp_path / "whole.json", progress=False)
    out = tmp_path / "run.json"
    assert run_and_log(config, out, progress=False, stop=StopAfter(7))["status"] == "preempted"
    final = run_and_log(config, out, progress=False)
    assert final["status"] == "finished" and final["resumed_at_step"] == [7]
    assert final["loss"] == whole["loss"] and final["accuracy"] == whole["accuracy"]


# sweeps and plots -----------------------------------------------------------------------------

SPEC = """
name = "mine"
task = "blobs={mod}:blobs"
task_options = {{ centers = 3 }}
network = "{mod}:TwoLayer"
network_options = {{ width = 6 }}
steps = {steps}
batch_size = 8
bin_size = 10
seeds = 2

[learners.adahesscale]
lr = 0.01

[learners.rms]
learner = "torch.optim:RMSprop"
lr = [0.003, 0.01]
alpha = 0.9

[learners.mine]
learner = "{mod}:scaled_sgd"
lr = 0.3
"""


def _write_spec(code: Path, mod: str, steps: int = 20) -> Path:
    spec = code / "mine.toml"  # beside the module: searched first
    spec.write_text(SPEC.format(mod=mod, steps=steps))
    return spec


def _check_plotted(out: Path, learners: set[str]) -> None:
    assert run_cli("plot", str(out)) == 0
    summary = (out / "plots" / "summary.md").read_text()
    assert {line.split("|")[1].strip() for line in summary.splitlines()[4:]} == learners
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == [f"curves_blobs_{NETWORK_TAG}.png", f"sensitivity_blobs_{NETWORK_TAG}.png"]


NETWORK_TAG = "TwoLayer"  # (after the module's name, which differs per test)


def test_a_sweep_of_user_components_runs_here_and_plots(user_code, capsys):
    code, mod = user_code
    spec = _write_spec(code, mod)
    out = Path("out")  # the working directory does not hold the module: the spec's folder does
    assert run_cli("sweep", str(spec), "--out-dir", str(out), "--jobs", "1", "--no-progress") == 0
    assert "8 runs: 8 finished" in capsys.readouterr().out
    logs = [read_log(p) for p in (out / "logs").rglob("seed_*.json")]
    assert {log["learner"] for log in logs} == {"adahesscale", "rms", "mine"}
    assert all(log["task"]["name"] == "blobs" for log in logs)
    commands = (out / "commands" / "mine.txt").read_text()
    assert f"--pythonpath {code}" in commands and f"mine={mod}:scaled_sgd" in commands
    assert f"blobs={mod}:blobs" in commands and "--task-opt centers=3" in commands
    rms = (out / "commands" / "rms.txt").read_text()
    assert rms.count("--learner rms=torch.optim:RMSprop") == 4
    assert run_cli("plot", str(out)) == 0
    summary = (out / "plots" / "summary.md").read_text()
    assert all(f"| {learner} |" in summary for learner in ("adahesscale", "rms", "mine"))
    assert len(list((out / "plots").glob("curves_blobs_*TwoLayer.png"))) == 1


@pytest.mark.slow
def test_a_sweep_of_user_components_runs_in_a_process_pool(user_code, capsys):
    """The pool's workers are new processes: they import the components by path."""
    code, mod = user_code
    spec = _write_spec(code, mod)
    out = Path("out")
    assert run_cli("sweep", str(spec), "--out-dir", str(out), "--jobs", "2", "--no-progress") == 0
    assert "8 runs: 8 finished" in capsys.readouterr().out
    assert run_cli("plot", str(out)) == 0
    assert "| mine |" in (out / "plots" / "summary.md").read_text()


@pytest.mark.slow
def test_slurm_lines_carry_what_imports_the_components(user_code, tmp_path, capsys):
    code, mod = user_code
    spec = _write_spec(code, mod, steps=10)
    out = tmp_path / "out"
    argv = ["sweep", str(spec), "--out-dir", str(out), "--command-prefix", PYTHON_CLI]
    assert run_cli(*argv) == 0
    for script in (out / "slurm").glob("*.sh"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
    line = (out / "commands" / "mine.txt").read_text().splitlines()[0]
    assert f"--pythonpath {code}" in line
    # by hand, from a folder that does not hold the module, with no PYTHONPATH to it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    src = Path(hesscale.__file__).parents[1]  # this checkout's hesscale, not another install
    env["PYTHONPATH"] = str(src)
    done = subprocess.run(["bash", "-c", line], cwd=elsewhere, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    (log,) = (out / "logs" / "mine").rglob("seed_0.json")
    assert read_log(log)["status"] == "finished"
    # and as SLURM's array task 0 of another learner (the script changes to the sweep's folder)
    env.update(SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_JOB_ID="1")
    script = out / "slurm" / "rms.sh"
    done = subprocess.run(["bash", str(script)], cwd=elsewhere, env=env, capture_output=True)
    assert done.returncode == 0, done.stdout.decode()
    assert read_log(next((out / "logs" / "rms").rglob("seed_0.json")))["status"] == "finished"


# the Python API -------------------------------------------------------------------------------


def _register_user_components(code: Path, mod: str, monkeypatch) -> object:
    monkeypatch.syspath_prepend(str(code))
    module = __import__(mod)
    experiments.register_task("blobs", module.blobs)
    experiments.register_network("two_layer", module.TwoLayer)
    experiments.register_learner("mine", module.scaled_sgd)
    experiments.register_learner("rms", torch.optim.RMSprop)
    return module


def _api_spec(steps: int = 20) -> dict:
    return {
        "name": "api",
        "task": "blobs",
        "network": "two_layer",
        "network_options": {"width": 6},
        "steps": steps,
        "batch_size": 8,
        "bin_size": 10,
        "seeds": 2,
        "learners": {"mine": {"lr": 0.3}, "rms": {"lr": [0.003, 0.01]}},
    }


def test_registered_components_run_sweep_and_plot_from_python(
    user_code, registries, monkeypatch, tmp_path
):
    code, mod = user_code
    _register_user_components(code, mod, monkeypatch)
    log = experiments.train(RunConfig("blobs", "two_layer", "mine", 0.3, steps=20, bin_size=10))
    assert log["status"] == "finished" and log["components"]["network"] == "two_layer"
    runs = experiments.run_sweep(_api_spec(), out_dir=tmp_path / "api", jobs=1)
    assert sum(map(len, runs.values())) == 6
    assert all(read_log(r.log)["status"] == "finished" for rs in runs.values() for r in rs)
    # the command lists name them by import path, for other processes
    commands = (tmp_path / "api" / "commands" / "mine.txt").read_text()
    assert f"--learner mine={mod}:scaled_sgd" in commands and f"--pythonpath {code}" in commands
    assert f"--network two_layer={mod}:TwoLayer" in commands
    rms = (tmp_path / "api" / "commands" / "rms.txt").read_text()
    assert "--learner rms=torch.optim.rmsprop:RMSprop" in rms  # where the class is defined
    written = experiments.plot_all(tmp_path / "api")
    assert [p.name for p in written][-1] == "summary.md"
    assert "| mine |" in written[-1].read_text() and "| rms |" in written[-1].read_text()


@pytest.mark.slow
def test_registered_components_run_in_a_process_pool(user_code, registries, monkeypatch, tmp_path):
    code, mod = user_code
    _register_user_components(code, mod, monkeypatch)
    runs = experiments.run_sweep(_api_spec(), out_dir=tmp_path / "api", jobs=2)
    assert all(read_log(r.log)["status"] == "finished" for rs in runs.values() for r in rs)


def test_components_only_this_process_knows_run_here_but_not_in_a_pool(registries, tmp_path):
    experiments.register_network(
        "inline", lambda shape, n: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, n))
    )
    spec = {
        "name": "inline",
        "task": "digits",
        "network": "inline",
        "steps": 4,
        "learners": {"sgd": {"lr": 0.1}},
    }
    with pytest.raises(SpecError, match="network 'inline' cannot be imported by other processes"):
        experiments.run_sweep(spec, out_dir=tmp_path / "pool", jobs=2)
    assert not (tmp_path / "pool").exists()
    runs = experiments.run_sweep(spec, out_dir=tmp_path / "here", jobs=1)
    assert read_log(runs["sgd"][0].log)["status"] == "finished"


def test_registering_checks_the_component_and_keeps_built_ins(registries):
    with pytest.raises(ComponentError, match="'adam' is a built-in learner"):
        experiments.register_learner("adam", torch.optim.SGD)
    with pytest.raises(ComponentError, match="expected a learner"):
        experiments.register_learner("fn", len)
    with pytest.raises(ComponentError, match="nn.Module instance"):
        experiments.register_network("net", torch.nn.Linear(2, 2))
    with pytest.raises(ComponentError, match="cannot be called as factory"):
        experiments.register_task("t", lambda: None)


def test_a_task_family_serves_every_name_with_its_prefix(registries):
    """How other kinds of tasks (e.g. reinforcement learning, rl:<environment>) plug in."""
    seen = []

    def family(settings, **options):
        seen.append(settings.name)
        return TASKS["digits"](settings)

    experiments.register_task("toy:*", family)
    config = RunConfig("toy:anything-v1", "fc_relu_small", "sgd", 0.1, steps=2, bin_size=1)
    assert experiments.train(config)["status"] == "finished" and seen == ["toy:anything-v1"]
    with pytest.raises(ComponentError, match="Unknown task 'toyish'"):
        RunConfig("toyish", "fc_relu_small", "sgd", 0.1).validate()


def test_a_task_may_bring_its_own_stepper(registries):
    """A task with make_stepper (another kind of learning) gets the trainer without
    SupervisedLearning in between."""

    class CountingStepper:
        metrics = ("loss", "accuracy")

        def __init__(self, model, learner):
            self.model, self.learner, self.k = model, learner, 0

        def step(self):
            self.k += 1
            return {"loss": (float(self.k), 1), "accuracy": (1, 1)}

        def evaluate(self):
            return {}

        def state_dict(self):
            return {"k": self.k}

        def load_state_dict(self, state):
            self.k = state["k"]

    class OwnKind:
        input_shape, n_outputs = (3,), 2

        def make_stepper(self, model, learner, device):
            assert isinstance(model, torch.nn.Module) and isinstance(learner, Learner)
            return CountingStepper(model, learner)

    experiments.register_task("own", lambda settings: OwnKind())
    log = experiments.train(RunConfig("own", "fc_relu_small", "adam", 0.1, steps=4, bin_size=2))
    assert log["loss"] == [1.5, 3.5]


# bad references -------------------------------------------------------------------------------

BAD = [
    # (option, reference, extra options, what the message says)
    ("task", "nosuchmodule_q7:blobs", [], ["task 'nosuchmodule_q7:blobs'", "no module named"]),
    ("network", "{mod}:NoSuchNet", [], ["has no attribute 'NoSuchNet'", "TwoLayer"]),
    ("network", "broken_{mod}:net", [], ["broken_{mod}", "raised SyntaxError"]),
    ("network", "missing_file.py:net", [], ["no file missing_file.py"]),
    ("task", "{mod}:", [], ["not an import path"]),
    ("network", "{mod}:NOT_A_FACTORY", [], ["an instance of int", "expected a network factory"]),
    ("network", "{mod}:network_instance", [], ["is an nn.Module instance (Linear)"]),
    ("network", "{mod}:no_arguments", [], ["cannot be called as factory(input_shape, n_outputs)"]),
    ("task", "{mod}:no_arguments", [], ["cannot be called as factory(settings)"]),
    ("learner", "{mod}:TwoLayer", [], ["the class", "expected a learner: a torch.optim.Optim"]),
    ("learner", "{mod}:sgd_instance", [], ["optimizer instance (SGD); name its class"]),
    ("learner", "torch.optim:LBFGS", [], ["needs a closure"]),
    ("network", "{mod}:TwoLayer", ["depth=3"], ["does not take the options ['depth']"]),
    # found only by building: before any run starts, nothing written
    ("network", "{mod}:returns_text", [], ["returned an instance of str", "expected an nn.Module"]),
    ("task", "{mod}:task_returns_tensor", [], ["returned an instance of Tensor", "a task"]),
    ("learner", "adaggnmc", [], ["runs BackPACK", "chain of modules", "adahesscale"]),
]
GOOD = {"task": "{mod}:blobs", "network": "{mod}:TwoLayer", "learner": "sgd"}


@pytest.mark.parametrize("option, reference, network_options, expected", BAD)
def test_a_bad_reference_is_a_clear_error_before_anything_is_written(
    user_code, tmp_path, capsys, option, reference, network_options, expected
):
    code, mod = user_code
    components = {**GOOD, option: reference}
    components = {k: v.format(mod=mod) for k, v in components.items()}
    expected = [e.format(mod=mod) for e in expected]
    before = files_under(tmp_path)
    argv = ["run", *(a for k, v in components.items() for a in (f"--{k}", v))]
    argv += [a for o in network_options for a in ("--network-opt", o)]
    argv += ["--lr", "0.1", "--steps", "3", "--pythonpath", str(code), "--no-progress"]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hesscale run: ") and all(e in err for e in expected), err
    assert files_under(tmp_path) == before
    # the same in a spec: the sweep refuses before any run starts
    lines = [f"{k} = {json.dumps(v)}" for k, v in components.items() if k != "learner"]
    if network_options:
        key, value = network_options[0].split("=")
        lines.append(f"network_options = {{ {key} = {value} }}")
    learner = components["learner"]
    lines += ["steps = 3", "[learners.one]", f"learner = {json.dumps(learner)}", "lr = 0.1"]
    spec = code / "bad.toml"
    spec.write_text("\n".join(lines) + "\n")
    before = files_under(tmp_path)
    out = tmp_path / "out"
    assert run_cli("sweep", str(spec), "--out-dir", str(out), "--jobs", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hesscale sweep: {spec}: ") or err.startswith("hesscale sweep: ")
    assert all(e in err for e in expected), err
    assert not out.exists() and files_under(tmp_path) == before


def test_an_error_inside_a_users_factory_shows_where(user_code, capsys):
    code, mod = user_code
    (code / "faulty.py").write_text("def net(input_shape, n_outputs):\n    return 1 / 0\n")
    argv = ["run", "--task", "digits", "--network", f"{code}/faulty.py:net", "--learner", "sgd"]
    assert run_cli(*argv, "--lr", "0.1", "--no-progress") == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "return 1 / 0" in err  # the user's line
    assert "network '" in err and "raised ZeroDivisionError when called as factory(" in err
    assert not Path("runs").exists()


# the worked example ---------------------------------------------------------------------------


@pytest.mark.slow
def test_the_worked_example_sweeps_and_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    spec = Path(__file__).resolve().parents[1] / "examples" / "custom_components.toml"
    assert run_cli("sweep", str(spec), "--jobs", "2", "--no-progress") == 0
    assert "14 runs: 14 finished" in capsys.readouterr().out
    assert run_cli("plot", "custom_components") == 0
    plots = tmp_path / "results" / "custom_components" / "plots"
    summary = (plots / "summary.md").read_text()
    assert all(f"| {name} |" in summary for name in ("adahesscale", "rmsprop", "newton"))
    assert (plots / "curves_noisy_digits_resnet_mlp.png").read_bytes().startswith(b"\x89PNG")


def test_the_examples_components_satisfy_their_contracts(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    examples = Path(__file__).resolve().parents[1] / "examples" / "custom_components.py"
    config = RunConfig(
        f"{examples}:noisy_digits",
        f"{examples}:ResidualMLP",
        f"{examples}:diagonal_newton",
        0.03,
        steps=10,
        batch_size=4,
        bin_size=5,
        hyperparameters={"damping": 0.1},
        network_options={"width": 8, "blocks": 1},
    )
    log = experiments.train(config)
    assert log["status"] == "finished" and all(v < 5 for v in log["loss"])


def test_the_docs_python_sweep_runs_as_written(registries, tmp_path, monkeypatch):
    page = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "experiments.md"
    (code,) = [
        c for c in re.findall(r"```python\n(.*?)```", page.read_text(), re.S) if "run_sweep" in c
    ]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(page), "exec"), {"__name__": "readme"})
    summary = (tmp_path / "results" / "wide" / "plots" / "summary.md").read_text()
    assert "| adahesscale |" in summary and "| rmsprop |" in summary


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_without_a_main_guard_is_told_what_to_do(tmp_path, guarded):
    """Issue 17: run_sweep(..., jobs=2) at a script's top level printed 142 lines of
    multiprocessing errors, then "A worker process died (out of memory?)". The call's line
    is found inside an `if __name__ == ...` block or not."""
    from hesscale.experiments.sweep.api import _inside_name_check

    call = "run_sweep(SPEC, jobs=2)"
    body = f'if __name__ == "__main__":\n    {call}\n' if guarded else f"{call}\n"
    script = tmp_path / "sweep_script.py"
    script.write_text("from hesscale.experiments import run_sweep\nSPEC = {}\n" + body)
    assert _inside_name_check(script, 4 if guarded else 3) == guarded


def test_run_sweep_refuses_an_unguarded_top_level_call(tmp_path, monkeypatch):
    """The check as run_sweep meets it: called from the top level of a __main__ script."""
    script = tmp_path / "unguarded.py"
    script.write_text("from hesscale.experiments import run_sweep\nrun_sweep(SPEC, jobs=2)\n")
    namespace = {"__name__": "__main__", "__file__": str(script), "SPEC": _api_spec(steps=4)}
    code = compile(script.read_text(), str(script), "exec")
    monkeypatch.chdir(tmp_path)
    from hesscale.experiments.sweep.spec import SpecError

    with pytest.raises(SpecError, match='if __name__ == "__main__"'):
        exec(code, namespace)
    assert not (tmp_path / "results").exists()  # refused before anything was written
