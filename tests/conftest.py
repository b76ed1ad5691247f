"""Suite-wide settings. The brute-force oracles run thousands of tiny operations, for which
extra intra-op threads only spin (10x slower wall time on 2 cores), so the tests use one."""

import contextlib

import pytest
import torch

torch.set_num_threads(1)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture
def float64():
    """Run a test in float64 (the precision of the brute-force oracles)."""
    with _default_dtype(torch.float64):
        yield


@pytest.fixture
def float32():
    """Run a test in float32 inside a float64 module (models that build float32 tensors of their
    own, e.g. RAFT's coordinate grids)."""
    with _default_dtype(torch.float32):
        yield
