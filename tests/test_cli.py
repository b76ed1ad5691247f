"""The `hesscale` command as a new user meets it: help, start-up, and bad arguments rejected
with a message before anything is written."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from hesscale import cli
from hesscale.experiments.sweep.plan import count_runs, plan
from hesscale.experiments.sweep.spec import load_spec, shipped_specs
from tests.test_experiments import needs_missing_rl_extra

RUN = ["run", "--task", "digits", "--network", "fc_relu_small", "--learner", "sgd", "--lr", "0.1"]


def test_no_arguments_prints_the_help(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hesscale")
    assert all(name in out for name in cli.SUBCOMMANDS) and "examples:" in out
    assert "``" not in out  # written for users, not a developer docstring


def test_help_and_import_do_not_load_torch():
    """`hesscale --help` imports only the parser: no torch, BackPACK or subcommand module."""
    code = (
        "import sys, contextlib, io\n"
        "import hesscale\n"
        "from hesscale import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'usage: hesscale' in out.getvalue()\n"
        "heavy = [m for m in ('torch', 'backpack', 'numpy', 'hesscale.experiments')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_lazy_top_level_names_still_work():
    import hesscale

    assert hesscale.HesScale.__name__ == "HesScale"
    assert "Linear" in hesscale.supported_modules()
    assert hesscale.optim.AdaHesScale.__name__ == "AdaHesScale"
    with pytest.raises(AttributeError):
        hesscale.no_such_name  # noqa: B018


def test_version(capsys):
    import hesscale

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"hesscale {hesscale.__version__}"


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return capsys.readouterr().out


def test_help_shows_each_default_once(capsys):
    run_help = " ".join(_help("run", capsys).split())
    assert "(default: 1000)" in run_help and "(default: 32)" in run_help  # --steps, --batch-size
    approx = " ".join(_help("approx-quality", capsys).split())
    assert "(default: None)" not in approx
    assert approx.count("$HESSCALE_DATA_DIR or data") == 1
    for name in ("GGN-MC-1", "KFAC-k", "Hutchinson-k", "BL89", "HesScaleGN", "SquaredGrad"):
        assert name in approx  # --methods lists the names
    cost_help = " ".join(_help("cost", capsys).split())
    assert "HesScaleGN" in cost_help and "DiagHessian" in cost_help


def test_a_missing_experiments_extra_is_named(monkeypatch, capsys):
    real = importlib.import_module

    def without_matplotlib(name, *args):
        if name == "hesscale.experiments.plot":
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
        return real(name, *args)

    monkeypatch.setattr(cli.importlib, "import_module", without_matplotlib)
    assert cli.main(["plot", "results"]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "hesscale[experiments]" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "change, message",
    [
        (["--task", "digit"], "Unknown task 'digit'"),
        (["--network", "fc_relu_smal"], "Unknown network 'fc_relu_smal'"),
        (["--opt", "momentun=0.9"], "has no hyperparameter 'momentun'"),
        (["--opt", "momentum=-1"], "momentum"),
        (["--steps", "-5"], "--steps must be at least 1, got -5"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--lr", "0"], "--lr must be a finite number > 0"),
        (["--lr", "-0.1"], "--lr must be a finite number > 0"),
        (["--hidden", "8", "--network", "small_cnn"], "does not take the options ['hidden']"),
        (["--hidden", "0"], "hidden sizes must be integers >= 1"),
        (["--learner", "torch.optim:RMSProp"], "has no attribute 'RMSProp'"),
        (["--learner", "torch.optim:LBFGS"], "needs a closure"),
        (["--network", "torch.nn:Linear"], "raised TypeError when called as factory(input_sh"),
        (["--task-opt", "normalize='z'"], "normalize='z'"),
        (["--device", "gpu"], "--device 'gpu' is not a device"),
    ],
)
def test_bad_run_arguments_are_rejected_before_anything_is_written(
    tmp_path, monkeypatch, capsys, change, message
):
    monkeypatch.chdir(tmp_path)  # the default output folder would be created here
    assert cli.main([*RUN, *change, "--no-progress"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the traceback of the user's code, if any
    assert last.startswith("hesscale run: ") and message in last
    if "raised TypeError" not in message:  # the user's code raising: shown where
        assert "Error:" not in err and "Traceback" not in err  # a message, not an exception
    assert list(tmp_path.iterdir()) == []


def test_default_run_folder_is_ignored_by_git():
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "runs/" in ignored and "results/" in ignored


def test_sweep_list_says_what_each_spec_is_and_how_many_runs(capsys):
    assert cli.main(["sweep", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    specs = shipped_specs()
    assert len(lines) == len(specs)
    for line in lines:
        name, count, runs, *description = line.split()
        assert runs == "runs" and int(count) == count_runs(specs[name])
        if needs_missing_rl_extra(specs[name]):
            continue  # the count needs no extra; loading the spec does
        planned = plan(load_spec(specs[name]), Path("/tmp/unused"))
        assert int(count) == sum(len(r) for r in planned.values())
        assert len(" ".join(description)) > 20  # a sentence, not a path


def test_bad_sweep_settings_are_rejected_before_anything_is_written(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text(
        'task = "digits"\nnetwork = "fc_relu_small"\nsteps = -3\n[learners.sgd]\nlr = 0.1\n'
    )
    out = tmp_path / "out"
    assert cli.main(["sweep", str(spec), "--out-dir", str(out)]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert not out.exists()


def test_the_experiments_package_names_its_extra_when_a_package_is_missing():
    code = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'tqdm' else real(name, *a)\n"
        "from hesscale import cli\n"
        "sys.exit(cli.main(['plot', 'results']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "needs tqdm" in result.stderr and "hesscale[experiments]" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_run_without_its_data_writes_nothing(tmp_path, monkeypatch, capsys):
    """Issue 17: `hesscale run --task mnist` with no data exited 1 but left a `failed` log."""
    monkeypatch.chdir(tmp_path)
    args = ["run", "--task", "mnist", "--network", "fc_tanh_small", "--learner", "sgd"]
    args += ["--lr", "0.01", "--steps", "2", "--data-dir", str(tmp_path / "none")]
    assert cli.main([*args, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MNIST training data was not found" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_sweep_help_opens_with_what_a_user_needs(capsys):
    """Issue 17: `hesscale sweep --help` opened with internal module notes."""
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    text = capsys.readouterr().out
    description = text.split("\n\n", 2)[1]
    assert description.startswith("SPEC is a TOML file") and "Modules:" not in text


def test_names_ignore_case_and_typos_get_a_suggestion(tmp_path, capsys):
    """Issue 17: `--learner AdaHesScale` was refused, and typos got no "did you mean"."""
    common = ["run", "--task", "Digits", "--network", "fc_tanh_small", "--lr", "0.01"]
    common += ["--steps", "1", "--no-progress"]
    out = tmp_path / "log.json"
    assert cli.main([*common, "--learner", "AdaHesScale", "--out", str(out)]) == 0
    assert '"learner": "adahesscale"' in out.read_text()
    assert cli.main([*common, "--learner", "adahescale", "--out", str(tmp_path / "b")]) == 2
    assert "Did you mean 'adahesscale'" in capsys.readouterr().err
