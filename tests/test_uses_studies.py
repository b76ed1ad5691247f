"""The uses studies' scripts end to end, tiny (slow: they train networks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_pruning_study(tmp_path):
    pytest.importorskip("sklearn")
    out = run(
        "pruning_digits.py", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path / "p.json")
    )
    assert "| OBD HesScaleGN |" in out and "90% pruned" in out
    rows = json.loads((tmp_path / "p.json").read_text())
    assert {r["method"] for r in rows} >= {"magnitude", "OBD HesScaleGN", "OBD exact Hessian"}


def test_continual_study(tmp_path):
    pytest.importorskip("matplotlib")
    out = run(
        "continual_digits.py",
        "--tasks",
        "2",
        "--task-steps",
        "3",
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "c.json"),
    )
    assert "UPGD second-order (HesScale)" in out
    run(
        "continual_digits.py",
        "--plot",
        str(tmp_path / "c.json"),
        "--figure",
        str(tmp_path / "c.png"),
    )
    assert (tmp_path / "c.png").stat().st_size > 0


def test_laplace_study(tmp_path):
    pytest.importorskip("laplace")
    out = run(
        "laplace_digits.py",
        "--models",
        "residual",
        "--epochs",
        "1",
        "--backends",
        "HesScaleGGN",
        "BackPackGGN",
        "--out",
        str(tmp_path / "l.json"),
    )
    assert "| residual | HesScaleGGN (hesscale) | marglik |" in out
    assert "| residual | BackPackGGN (exact) | | | fails:" in out


def test_structured_pruning_study(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("torch_pruning")
    out = run(
        "structured_pruning_digits.py", "--seeds", "0", "--epochs", "1", "--finetune", "1",
        "--out", str(tmp_path / "s.json"),
    )  # fmt: skip
    assert "| OBD HesScale |" in out and "75% of channels" in out
    rows = json.loads((tmp_path / "s.json").read_text())
    assert {r["method"] for r in rows} == {"dense", "random", "magnitude", "Taylor",
                                           "OBD empirical Fisher", "OBD HesScale"}  # fmt: skip
    parameters = {r["ratio"]: r["parameters"] for r in rows if r["method"] != "dense"}
    assert parameters[0.25] > parameters[0.5] > parameters[0.75]
