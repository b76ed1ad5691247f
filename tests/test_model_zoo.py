"""benchmarks/model_zoo.py end to end on a few of torchvision's models (slow: real networks)."""

import pytest

from tests.test_uses_studies import run

pytestmark = pytest.mark.slow


def test_model_zoo_checks_and_times_models():
    out = run("model_zoo.py", "--only", "mobilenet_v3_small", "shufflenet_v2_x0_5", "--cost",
              "--rounds", "2")  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| torchvision |")]
    assert len(rows) == 2 and all("| ok |" in row for row in rows), out
    assert all(float(row.rstrip(" |").rsplit("|", 1)[1]) > 1 for row in rows)  # the ratio
