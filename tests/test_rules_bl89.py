"""BL89's rules (hesscale.rules.bl89) against their definition: each softmax output as a
function of its own input alone, derivatives from dense autograd (float64)."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from hesscale.rules import bl89
from tests.oracle import assert_close

pytestmark = pytest.mark.usefixtures("float64")


def own_input_derivatives(fn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d out_i / d z_i and d^2 out_i / d z_i^2 for every entry i (the diagonal of the Jacobian
    and the matching entries of each output's Hessian), by brute force."""
    n = z.numel()
    first_jacobian = lambda u: jacobian(fn, u, create_graph=True).reshape(n, n)  # noqa: E731
    second = jacobian(first_jacobian, z).reshape(n, n, n)  # [k, i, j] = d2 out_k / dz_i dz_j
    index = torch.arange(n)
    first = first_jacobian(z).diagonal()
    return first.reshape(z.shape), second[index, index, index].reshape(z.shape)


def bl89_definition(fn, z, h_out, g_out):
    """h_i = (d out_i / d z_i)^2 h_i + d^2 out_i / d z_i^2 g_i."""
    first, second = own_input_derivatives(fn, z)
    h = first.square() * h_out
    return h if g_out is None else h + second * g_out


@pytest.mark.parametrize("shape, dim", [((1, 4), 1), ((3, 5), 1), ((2, 3, 4), 1), ((2, 3), 0)])
@pytest.mark.parametrize("gauss_newton", [False, True])
@pytest.mark.parametrize("log", [False, True])
def test_elementwise_softmax_rules_match_their_definition(shape, dim, gauss_newton, log):
    torch.manual_seed(0)
    z, h_out, g_out = 2 * torch.randn(shape), torch.randn(shape), torch.randn(shape)
    g = None if gauss_newton else g_out
    fn = (lambda u: u.log_softmax(dim)) if log else (lambda u: u.softmax(dim))
    rule = bl89.log_softmax_input if log else bl89.softmax_input
    assert_close(rule(z, h_out, g, dim), bl89_definition(fn, z, h_out, g))


def test_shifted_logits_turn_each_softmax_output_into_a_sigmoid():
    torch.manual_seed(1)
    z = torch.randn(3, 6)
    shifted = bl89.shifted_logits(z, 1)
    assert_close(torch.sigmoid(shifted), z.softmax(1))
    assert_close(F.logsigmoid(shifted), z.log_softmax(1))
    with pytest.raises(ValueError, match="at least 2"):
        bl89.shifted_logits(torch.randn(3, 1), 1)


def test_cross_entropy_rule_is_the_log_softmax_rule_with_the_nll_gradient():
    """Cross-entropy = NLL (linear in the log-probabilities) after log-softmax: BL89 keeps
    -p_t (1 - p_t) * g_t on the target logit and nothing elsewhere."""
    torch.manual_seed(2)
    logits, target = torch.randn(4, 5), torch.tensor([0, 3, 4, 1])
    log_probs = logits.log_softmax(1).detach().requires_grad_(True)
    g = torch.autograd.grad(F.nll_loss(log_probs, target), log_probs)[0]
    zeros = torch.zeros_like(logits)
    expected = bl89_definition(lambda u: u.log_softmax(1), logits, zeros, g)
    assert_close(bl89.cross_entropy_input(logits, g), expected)
    p = logits.softmax(1)
    on_target = torch.zeros_like(p).scatter_(1, target[:, None], 1)
    assert_close(expected, on_target * p * (1 - p) / len(target))
