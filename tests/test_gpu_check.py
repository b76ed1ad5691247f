"""benchmarks/gpu_check.py: without CUDA it refuses in one line; its checks run end to end (on
the CPU here, small; the same code runs on CUDA)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_without_cuda_it_says_so_and_exits_non_zero():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], done.stderr
    assert done.stdout == ""


@pytest.mark.slow
def test_checks_run_end_to_end_on_the_cpu(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import gpu_check

    assert gpu_check.main("cpu", small=True, rounds=1) == 0
    out = capsys.readouterr().out
    for model in ("resnet18", "gpt", "lstm"):
        assert f"| {model} | HesScaleGN |" in out
    assert "all checks passed" in out
