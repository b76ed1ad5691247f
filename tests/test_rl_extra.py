"""The rl extra is optional: the library never imports it, and using RL without it says which
extra to install. Runs without gymnasium installed too."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hesscale.errors import MissingExtraError

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
}
RL_PACKAGES = ("gymnasium", "mujoco", "stable_baselines3")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )


def test_the_library_never_imports_the_rl_extra_and_rl_without_it_names_the_extra():
    """One fresh interpreter: importing the library and the run machinery loads none of the rl
    extra's packages; then, with gymnasium missing, an RL run says what to install."""
    done = python(
        "import sys, hesscale, hesscale.optim, hesscale.engine, hesscale.experiments.run, "
        "hesscale.experiments.sweep.plan, hesscale.experiments.plot, "
        "hesscale.experiments.rl.task, hesscale.experiments.rl.algorithms\n"
        f"print(sorted(m for m in {RL_PACKAGES!r} if sys.modules.get(m) is not None))\n"
        "sys.modules['gymnasium'] = None  # as if not installed\n"
        "from hesscale.cli import main\n"
        "sys.exit(main(['run', '--task', 'rl:Pendulum-v1', '--network', 'actor_critic_tanh',"
        " '--learner', 'adam', '--lr', '0.001', '--steps', '4096']))"
    )
    assert done.stdout.strip() == "[]", done.stderr
    assert done.returncode == 2
    assert 'pip install -e ".[rl]"' in done.stderr and "gymnasium" in done.stderr
    assert "Traceback" not in done.stderr


def test_make_env_without_gymnasium_raises_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)
    from hesscale.experiments.rl.envs import make_env

    with pytest.raises(MissingExtraError, match=r"'rl' extra") as error:
        make_env("Pendulum-v1")
    assert isinstance(error.value, ModuleNotFoundError) and error.value.name == "gymnasium"


def test_the_rl_extra_holds_gymnasium_with_mujoco_and_sb3_and_dev_includes_it():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {d.split(">")[0].split("=")[0] for d in extras["rl"]}
    assert {"gymnasium[mujoco]", "stable-baselines3"} <= names
    assert "hesscale[rl]" in extras["dev"]
