"""Per-operation rules for reductions (logsumexp, max / min / median with ties, products,
cumulative sums, sort / topk, variance, standard deviation, vector norms) against the
definition computed by brute force for that one operation."""

from __future__ import annotations

import pytest
import torch

from tests.engine_checks import check_op


def r(*shape, low=None):
    t = torch.randn(*shape, dtype=torch.float64)
    return t if low is None else t.abs() + low


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


def tied(*shape):
    """Values with repeated maxima and minima in every row."""
    t = torch.randint(0, 3, shape).to(torch.float64)
    t[..., 0] = 2.0
    t[..., 1] = 2.0
    t[..., 2] = 0.0
    t[..., 3] = 0.0
    return t


aten = torch.ops.aten
INF = float("inf")

# (id, fn, inputs, grad): fn(*inputs) records one node; grad says which inputs require grad
CASES = [
    ("logsumexp", lambda x: x.logsumexp(1), (r(3, 4),), None),
    ("logsumexp-dims-keepdim", lambda x: x.logsumexp((0, 2), keepdim=True), (r(2, 3, 4),), None),
    ("logsumexp-negative-dim", lambda x: x.logsumexp(-1), (r(2, 3, 4),), None),
    ("amax", lambda x: x.amax(1), (r(3, 4),), None),
    ("amax-ties", lambda x: x.amax(-1, keepdim=True), (tied(3, 5),), None),
    ("amin-ties-all", lambda x: x.amin(), (tied(2, 5),), None),
    ("max-all-ties", lambda x: x.max(), (tied(2, 5),), None),
    ("min-all", lambda x: x.min(), (r(3, 4),), None),
    ("max-dim", lambda x: x.max(1).values, (tied(3, 5),), None),
    ("min-dim-keepdim", lambda x: x.min(0, keepdim=True).values, (r(3, 4),), None),
    ("median", lambda x: x.median(), (r(3, 5),), None),
    ("median-ties", lambda x: x.median(), (f64([1.0, 2.0, 2.0, 3.0, 2.0]),), None),
    ("median-dim", lambda x: x.median(1).values, (r(3, 5),), None),
    ("nanmedian", lambda x: x.nanmedian(), (r(3, 5),), None),
    ("nanmedian-dim", lambda x: x.nanmedian(0).values, (r(3, 5),), None),
    ("kthvalue", lambda x: x.kthvalue(2, 1).values, (r(3, 5),), None),
    ("sort", lambda x: x.sort(1, descending=True).values, (r(3, 5),), None),
    ("topk", lambda x: x.topk(2, 0).values, (r(4, 3),), None),
    ("cummax", lambda x: x.cummax(1).values, (r(3, 5),), None),
    ("cummin", lambda x: x.cummin(0).values, (r(3, 5),), None),
    ("cumsum", lambda x: x.cumsum(1), (r(3, 5),), None),
    ("cumsum-dim0", lambda x: x.cumsum(0), (r(3, 5),), None),
    ("cumprod", lambda x: x.cumprod(1), (r(2, 4),), None),
    ("cumprod-with-zeros", lambda x: x.cumprod(0),
     (torch.tensor([[1.5, 0.0], [0.0, 2.0], [-1.0, 3.0]], dtype=torch.float64),), None),
    ("logcumsumexp", lambda x: x.logcumsumexp(1), (r(2, 4),), None),
    ("logcumsumexp-dim0", lambda x: x.logcumsumexp(0), (r(3, 2),), None),
    ("cdist", torch.cdist, (r(3, 2), r(4, 2)), None),
    ("cdist-p1-batched", lambda a, b: torch.cdist(a, b, p=1), (r(2, 3, 2), r(2, 4, 2)), None),
    ("cdist-p3", lambda a, b: torch.cdist(a, b, p=3), (r(3, 2), r(4, 2)), None),
    ("prod", lambda x: x.prod(), (r(2, 3),), None),
    ("prod-with-zero", lambda x: x.prod(), (f64([[1.5, 0.0], [-2.0, 3.0]]),), None),
    ("prod-dim", lambda x: x.prod(1, keepdim=True), (r(3, 4),), None),
    ("var", lambda x: x.var(1), (r(3, 5),), None),
    ("var-all", lambda x: x.var(), (r(3, 5),), None),
    ("var-dims-correction", lambda x: x.var((0, 2), correction=0, keepdim=True), (r(2, 3, 4),),
     None),
    ("var-fractional-correction", lambda x: torch.var(x, 1, correction=0.5), (r(3, 5),), None),
    ("std", lambda x: x.std(1), (r(3, 5),), None),
    ("std-all-unbiased-false", lambda x: x.std(unbiased=False), (r(3, 5),), None),
    ("std-keepdim", lambda x: x.std(-1, keepdim=True, correction=2), (r(2, 3, 5),), None),
    ("var-mean", lambda x: torch.var_mean(x, 1), (r(3, 5),), None),
    ("std-mean", lambda x: torch.std_mean(x, (0, 1), keepdim=True), (r(2, 3, 4),), None),
    ("norm", lambda x: x.norm(), (r(3, 4),), None),
    ("norm-dim", lambda x: torch.linalg.vector_norm(x, dim=1), (r(3, 4),), None),
    ("norm-keepdim", lambda x: torch.linalg.vector_norm(x, dim=(0, 2), keepdim=True),
     (r(2, 3, 4),), None),
    ("norm-1", lambda x: torch.linalg.vector_norm(x, 1, dim=1), (r(3, 4),), None),
    ("norm-3", lambda x: torch.linalg.vector_norm(x, 3, dim=-1), (r(3, 4),), None),
    ("norm-1.5", lambda x: torch.linalg.vector_norm(x, 1.5), (r(3, 4),), None),
    ("norm-inf", lambda x: torch.linalg.vector_norm(x, INF, dim=1), (r(3, 4),), None),
    ("norm-inf-ties", lambda x: torch.linalg.vector_norm(x, INF, dim=1), (tied(3, 5) - 1,),
     None),
    ("norm-minus-inf", lambda x: torch.linalg.vector_norm(x, -INF), (r(3, 4),), None),
    ("norm-0", lambda x: torch.linalg.vector_norm(x, 0, dim=1), (r(3, 4),), None),
    ("norm-aten-scalar", lambda x: aten.norm.Scalar(x, 3), (r(3, 4),), None),
    ("norm-aten-dim", lambda x: aten.norm.ScalarOpt_dim(x, 2, [1]), (r(3, 4),), None),
    ("norm-aten-dtype", lambda x: aten.norm.ScalarOpt_dtype(x, 3, dtype=torch.float64),
     (r(3, 4),), None),
    ("norm-aten-dim-dtype", lambda x: aten.norm.ScalarOpt_dim_dtype(
        x, 2, [0], False, dtype=torch.float64), (r(3, 4),), None),
]  # fmt: skip


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)


def test_norm_of_a_zero_vector_gives_zero_like_the_gradient():
    """The 2-norm is not differentiable at 0: torch's gradient is 0 there, and so is h."""
    from hesscale.engine.backward import node_diagonals

    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    z = torch.linalg.vector_norm(x, dim=1)
    ones = torch.ones(2, dtype=torch.float64)
    (h,) = node_diagonals(z.grad_fn, [ones], [ones])
    assert torch.equal(h, torch.zeros(2, 3, dtype=torch.float64))


def test_norms_of_order_below_one_are_refused():
    import hesscale
    from hesscale.errors import UnsupportedOperationError

    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(UnsupportedOperationError, match="vector norm of order 0.5"):
        hesscale.backward(torch.linalg.vector_norm(x, 0.5))
