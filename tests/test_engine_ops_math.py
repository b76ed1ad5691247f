"""Per-operation rules for arithmetic beyond + - * / and the elementwise mathematical functions
(powers of tensors, minimum / maximum with ties, addcmul / addcdiv, lerp, trigonometric, error
function, log1p / expm1, other bases, zero-derivative functions), against the definition
computed by brute force for that one operation."""

from __future__ import annotations

import pytest
import torch

from tests.engine_checks import check_op


def r(*shape, low=None):
    """Random float64 values; ``low`` keeps them above a bound."""
    t = torch.randn(*shape, dtype=torch.float64)
    return t if low is None else t.abs() + low


def u(*shape, low=0.1, high=0.9):  # uniform in (low, high)
    return torch.rand(*shape, dtype=torch.float64) * (high - low) + low


def with_ties(x, y):
    """x and y equal at every other entry (torch splits the gradient there)."""
    y = y.clone()
    y.view(-1)[::2] = x.view(-1)[::2]
    return x, y


TIED = with_ties(r(3, 4), r(3, 4))

# (id, fn, inputs, grad): fn(*inputs) records one node; grad says which inputs require grad
CASES = [
    # powers with tensor exponents
    ("pow-tensor", lambda x, y: x**y, (r(3, 4, low=0.5), r(3, 4)), None),
    ("pow-tensor-broadcast", lambda x, y: x**y, (r(3, 4, low=0.5), r(4)), None),
    ("pow-tensor-base-only", lambda x, y: x**y, (r(3, 4, low=0.5), r(4)), (True, False)),
    ("pow-tensor-exponent-only", lambda x, y: x**y, (r(3, 4, low=0.5), r(3, 4)), (False, True)),
    ("pow-number-base", lambda y: 2.5**y, (r(3, 4),), None),
    ("pow-number-base-below-one", lambda y: torch.pow(0.3, y), (r(3, 4),), None),
    # minimum / maximum (ties: each input gets half the gradient)
    ("minimum", torch.minimum, (r(3, 4), r(3, 4)), None),
    ("maximum-broadcast", torch.maximum, (r(3, 4), r(4)), None),
    ("maximum-ties", torch.maximum, TIED, None),
    ("minimum-ties", torch.minimum, TIED, None),
    ("fmax-ties", torch.fmax, TIED, None),
    ("fmin", torch.fmin, (r(3, 4), r(1, 4)), None),
    # fused multiply-add, interpolation
    ("addcmul", lambda x, a, b: torch.addcmul(x, a, b, value=-1.5), (r(3, 4), r(3, 4), r(4)),
     None),
    ("addcdiv", lambda x, a, b: torch.addcdiv(x, a, b, value=0.7),
     (r(3, 4), r(3, 4), r(3, 4, low=0.5)), None),
    ("addcdiv-broadcast", lambda x, a, b: torch.addcdiv(x, a, b, value=-2),
     (r(4), r(3, 4), r(3, 1, low=0.5)), None),
    ("lerp-number", lambda x, y: torch.lerp(x, y, 0.3), (r(3, 4), r(4)), None),
    ("lerp-tensor", torch.lerp, (r(3, 4), r(3, 4), r(4)), None),
    ("xlogy", torch.xlogy, (r(3, 4), r(3, 4, low=0.3)), None),
    ("atan2", torch.atan2, (r(3, 4), r(4)), None),
    # elementwise functions
    ("sin", torch.sin, (r(3, 4),), None),
    ("cos", torch.cos, (r(3, 4),), None),
    ("tan", torch.tan, (r(3, 4) / 2,), None),
    ("sinh", torch.sinh, (r(3, 4),), None),
    ("cosh", torch.cosh, (r(3, 4),), None),
    ("atan", torch.atan, (r(3, 4),), None),
    ("erf", torch.erf, (r(3, 4),), None),
    ("erfc", torch.erfc, (r(3, 4),), None),
    ("log1p", torch.log1p, (r(3, 4, low=0.1),), None),
    ("expm1", torch.expm1, (r(3, 4),), None),
    ("log2", torch.log2, (r(3, 4, low=0.2),), None),
    ("log10", torch.log10, (r(3, 4, low=0.2),), None),
    ("exp2", torch.exp2, (r(3, 4),), None),
    ("logit", torch.logit, (u(3, 4),), None),
    ("logit-eps", lambda x: torch.logit(x, eps=0.2), (u(3, 4, low=0.01, high=0.99),), None),
    ("nan-to-num", torch.nan_to_num,
     (torch.tensor([1.0, float("nan"), float("inf"), -2.0], dtype=torch.float64),), None),
    ("hypot", torch.hypot, (r(2, 3), r(3)), None),
    ("remainder", torch.remainder, (r(2, 3), r(2, 3)), None),
    ("remainder-number", lambda x: torch.remainder(x, 0.7), (r(2, 3),), None),
    ("fmod", torch.fmod, (r(2, 3), r(3)), None),
    ("fmod-number", lambda x: torch.fmod(x, -0.7), (r(2, 3),), None),
    ("erfinv", torch.erfinv, (u(2, 3, low=-0.9, high=0.9),), None),
    ("lgamma", torch.lgamma, (r(2, 3),), None),
    ("digamma", torch.digamma, (r(2, 3, low=0.3),), None),
    ("sign", torch.sign, (r(3, 4),), None),
    ("sgn", torch.sgn, (r(3, 4),), None),
    ("floor", torch.floor, (r(3, 4),), None),
    ("ceil", torch.ceil, (r(3, 4),), None),
    ("round", torch.round, (r(3, 4),), None),
    ("round-decimals", lambda x: torch.round(x, decimals=1), (r(3, 4),), None),
    ("trunc", torch.trunc, (r(3, 4),), None),
    ("frac", torch.frac, (r(3, 4),), None),
]  # fmt: skip


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)


def test_ties_give_quarter_weights():
    """At a tie maximum's Jacobian is 1/2 per input, so each receives h / 4."""
    import hesscale  # noqa: F401
    from hesscale.engine.backward import node_diagonals

    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 3.0], dtype=torch.float64, requires_grad=True)
    z = torch.maximum(x, y)
    h = torch.tensor([8.0, 8.0], dtype=torch.float64)
    h_x, h_y = node_diagonals(z.grad_fn, [h], [torch.ones(2, dtype=torch.float64)])
    assert h_x.tolist() == [2.0, 0.0]
    assert h_y.tolist() == [2.0, 8.0]
