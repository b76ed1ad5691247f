"""The minimal examples run as a user would run them: as scripts, in a fresh interpreter."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hesscale

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["minimal_mlp.py", "minimal_cnn.py"])
def test_minimal_example_runs(script):
    """Each example trains: the losses it prints after its steps on one batch are finite and
    fall."""
    assert "Conv2d" in hesscale.supported_modules()  # the CNN example's layers are supported
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Error" not in result.stderr
    losses = [float(v) for v in re.findall(r"step \d+: loss (\S+)", result.stdout)]
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses), result.stdout
    assert losses[-1] < losses[0], losses
