"""Suite-wide settings. The brute-force oracles run thousands of tiny operations, for which
extra intra-op threads only spin (10x slower wall time on 2 cores), so the tests use one."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def float64():
    """Run a test in float64 (the precision of the brute-force oracles)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
