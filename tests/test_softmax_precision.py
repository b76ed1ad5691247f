"""Confident predictions in float32: 1 - p for p near 1 (log-softmax, cross-entropy) keeps the
digits the float64 result has (found by benchmarks/gpu_check.py: a GPT's last-layer diagonals
were 1-3% off in float32 before)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hesscale
from hesscale.rules.losses import cross_entropy_diag


def confident_logits():
    torch.manual_seed(0)
    logits = torch.randn(64, 50, dtype=torch.float64)
    logits[:, 0] += 18.0  # p_0 = 1 - O(1e-7): 1 - p_0 has no correct digit in float32
    return logits, torch.randint(0, 50, (64,))


def relative_error(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("gn", [False, True])
def test_engine_cross_entropy_of_confident_logits(gn):
    logits, y = confident_logits()
    field = "hesscale_gn" if gn else "hesscale"
    results = []
    for dtype in (torch.float32, torch.float64):
        z = logits.to(dtype).requires_grad_()
        hesscale.backward(F.cross_entropy(z, y), gn=gn)
        results.append(getattr(z, field))
    assert relative_error(*results) < 1e-5


def test_rule_cross_entropy_of_confident_logits():
    logits, y = confident_logits()
    want = cross_entropy_diag(logits, y)
    assert relative_error(cross_entropy_diag(logits.float(), y), want) < 1e-5
    p = logits.softmax(1)
    torch.testing.assert_close(want, p * (1 - p) / 64)
