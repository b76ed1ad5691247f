"""The shortcuts taken for speed (derivatives from the stored output, ReLU's mask rule, the
fused elementwise rule) against the definition, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hesscale.rules import elementwise as ew
from tests.oracle import definition_diag


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(3, 5, dtype=torch.float64) * 2


@pytest.mark.parametrize(
    "module, from_output",
    [
        (nn.Tanh(), ew.tanh_derivatives_from_output),
        (nn.Sigmoid(), ew.sigmoid_derivatives_from_output),
    ],
)
@pytest.mark.parametrize("second_order", [True, False])
def test_derivatives_from_output_match_definition(x, module, from_output, second_order):
    h_out, g_out = torch.rand_like(x), torch.randn_like(x)
    g = g_out if second_order else None
    rule = ew.elementwise_input(h_out, g, *from_output(module(x)))
    torch.testing.assert_close(rule, definition_diag(module, x, h_out, g), rtol=1e-10, atol=0)


@pytest.mark.parametrize("second_order", [True, False])
def test_relu_mask_rule_matches_definition(x, second_order):
    h_out, g_out = torch.rand_like(x), torch.randn_like(x)
    expected = definition_diag(torch.relu, x, h_out, g_out if second_order else None)
    torch.testing.assert_close(ew.relu_input(h_out, torch.relu(x)), expected, rtol=0, atol=0)
    torch.testing.assert_close(ew.relu_input(h_out, x), expected, rtol=0, atol=0)


def test_elementwise_rule_broadcasts_and_takes_a_constant_second_derivative(x):
    """A scalar-like first derivative broadcasts against h_z; a float sigma'' is added as is."""
    h_out, g_out = torch.rand_like(x), torch.randn_like(x)
    first = torch.full((1, 5), 0.5, dtype=x.dtype)
    h = ew.elementwise_input(h_out, g_out, first, 3.0)
    torch.testing.assert_close(h, 0.25 * h_out + 3.0 * g_out)
    assert h.shape == x.shape
    h_out_before = h_out.clone()
    ew.elementwise_input(h_out, g_out, torch.ones_like(x), torch.ones_like(x))
    torch.testing.assert_close(h_out, h_out_before, rtol=0, atol=0)  # inputs are not modified
