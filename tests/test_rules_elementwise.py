"""Elementwise and softmax-family rules against the definition (dense autograd, float64)."""

import pytest
import torch
from torch import nn

from hesscale.rules import elementwise as ew
from hesscale.rules.softmax import log_softmax_input, softmax_input
from tests.oracle import assert_close, definition_diag

ACTIVATIONS = [
    (nn.LeakyReLU(0.07), lambda x: ew.leaky_relu_derivatives(x, 0.07)),
    (nn.Sigmoid(), ew.sigmoid_derivatives),
    (nn.Sigmoid(), lambda x: ew.sigmoid_derivatives_from_output(torch.sigmoid(x))),
    (nn.Tanh(), lambda x: ew.tanh_derivatives_from_output(torch.tanh(x))),
    (nn.ELU(alpha=0.7), lambda x: ew.elu_derivatives(x, 0.7)),
    (nn.SELU(), ew.selu_derivatives),
    (nn.Softplus(), lambda x: ew.softplus_derivatives(x, 1.0, 20.0)),
    (nn.Softplus(beta=2.0, threshold=1.5), lambda x: ew.softplus_derivatives(x, 2.0, 1.5)),
    (nn.LogSigmoid(), ew.logsigmoid_derivatives),
    (nn.SiLU(), ew.silu_derivatives),
    (nn.GELU(), ew.gelu_derivatives),
    (nn.GELU(approximate="tanh"), lambda x: ew.gelu_derivatives(x, "tanh")),
]


pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("module, derivatives", ACTIVATIONS, ids=lambda a: repr(a)[:40])
@pytest.mark.parametrize("shape", [(1, 5), (3, 2, 4)])
@pytest.mark.parametrize("gauss_newton", [False, True])
def test_elementwise_rule_matches_definition(module, derivatives, shape, gauss_newton):
    torch.manual_seed(0)
    x = 2.5 * torch.randn(shape)
    h_out, g_out = torch.randn(shape), torch.randn(shape)
    g = None if gauss_newton else g_out
    rule = ew.elementwise_input(h_out, g, *derivatives(x))
    assert_close(rule, definition_diag(module, x, h_out, g))


@pytest.mark.parametrize("shape", [(1, 5), (3, 2, 4)])
@pytest.mark.parametrize("gauss_newton", [False, True])
def test_relu_rule_matches_definition_from_input_or_output(shape, gauss_newton):
    torch.manual_seed(0)
    x = 2.5 * torch.randn(shape)
    h_out, g_out = torch.randn(shape), torch.randn(shape)
    expected = definition_diag(torch.relu, x, h_out, None if gauss_newton else g_out)
    torch.testing.assert_close(ew.relu_input(h_out, torch.relu(x)), expected, rtol=0, atol=0)
    torch.testing.assert_close(ew.relu_input(h_out, x), expected, rtol=0, atol=0)


def test_elementwise_rule_broadcasts_and_takes_a_constant_second_derivative():
    """A scalar-like first derivative broadcasts against h_z; a float sigma'' is added as is."""
    torch.manual_seed(0)
    h_out, g_out = torch.rand(3, 5), torch.randn(3, 5)
    first = torch.full((1, 5), 0.5)
    h = ew.elementwise_input(h_out, g_out, first, 3.0)
    assert_close(h, 0.25 * h_out + 3.0 * g_out)
    assert h.shape == h_out.shape
    h_out_before = h_out.clone()
    ew.elementwise_input(h_out, g_out, torch.ones(3, 5), torch.ones(3, 5))
    torch.testing.assert_close(h_out, h_out_before, rtol=0, atol=0)  # inputs are not modified


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate='erf'.*'none' or 'tanh'"):
        ew.gelu_derivatives(torch.zeros(2), "erf")


@pytest.mark.parametrize("dim, shape", [(1, (3, 4)), (-1, (2, 3, 5)), (0, (4, 2)), (1, (1, 3, 2))])
@pytest.mark.parametrize("gauss_newton", [False, True])
def test_softmax_rules_match_definition_with_full_jacobian(dim, shape, gauss_newton):
    torch.manual_seed(1)
    x, h_out, g_out = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    g = None if gauss_newton else g_out
    probs = torch.softmax(x, dim)
    assert_close(
        softmax_input(probs, h_out, g, dim),
        definition_diag(nn.Softmax(dim), x, h_out, g),
    )
    assert_close(
        log_softmax_input(probs, h_out, g, dim),
        definition_diag(nn.LogSoftmax(dim), x, h_out, g),
    )


def test_softmax_full_jacobian_differs_from_its_diagonal_only():
    """The original code used only the Jacobian's diagonal; the definition needs all of it."""
    torch.manual_seed(2)
    x, h_out = torch.randn(2, 4), torch.rand(2, 4)
    probs = torch.softmax(x, 1)
    diagonal_only = (probs * (1 - probs)).square() * h_out
    full = softmax_input(probs, h_out, None, 1)
    assert (full - diagonal_only).abs().max() > 1e-3


def test_dropout_train_rule_matches_definition_for_its_mask():
    from hesscale.rules.shape import dropout_input

    torch.manual_seed(3)
    x, h_out = torch.randn(3, 6), torch.randn(3, 6)
    mask = (torch.rand(3, 6) > 0.4).to(x.dtype)
    output = x * mask / (1 - 0.4)
    expected = definition_diag(lambda u: u * mask / (1 - 0.4), x, h_out, None)
    assert_close(dropout_input(h_out, output, 0.4), expected)
