"""The minimal examples run as a user would run them: as scripts, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import hesscale

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["minimal_mlp.py", "minimal_cnn.py"])
def test_minimal_example_runs(script):
    if script == "minimal_cnn.py" and "Conv2d" not in hesscale.supported_modules():
        pytest.skip("Conv2d support has not landed in hesscale yet")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Error" not in result.stderr
