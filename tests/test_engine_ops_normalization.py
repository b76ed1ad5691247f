"""Per-operation engine rules for BatchNorm (train and eval mode), LayerNorm and GroupNorm
against the brute-force definition: the full Jacobian of the one operation (batch statistics
included) and its own curvature."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.engine_checks import check_op


def r(*shape, low=None):
    t = torch.randn(*shape, dtype=torch.float64)
    return t if low is None else t.abs() + low


def batch_norm(training, eps=1e-5, running=None):
    """F.batch_norm with optional weight and bias; running statistics (updated in train mode)
    copied per call, so that repeated calls by the oracle see the same values."""

    def fn(x, weight=None, bias=None):
        mean, var = (None, None) if running is None else (running[0].clone(), running[1].clone())
        return F.batch_norm(x, mean, var, weight, bias, training=training, eps=eps)

    return fn


def running(c):
    return r(c), r(c, low=0.5)


def batch_norm_cases():
    shapes = {"1d": (4, 3), "1d-length": (2, 3, 4), "2d": (2, 3, 2, 3), "3d": (1, 2, 2, 3, 2),
              "2d-batch1": (1, 3, 3, 2)}  # fmt: skip
    for name, shape in shapes.items():
        c = shape[1]
        yield f"batchnorm{name}-train", batch_norm(True), (r(*shape), r(c), r(c)), None
        yield f"batchnorm{name}-eval", batch_norm(False, running=running(c)), (
            r(*shape), r(c), r(c)), None  # fmt: skip
    yield "batchnorm-train-no-affine", batch_norm(True, eps=0.1), (r(3, 2, 4),), None
    yield "batchnorm-train-running-stats", batch_norm(True, running=running(2)), (
        r(3, 2, 2), r(2), r(2)), None  # fmt: skip
    yield "batchnorm-train-weight-only", batch_norm(True), (r(4, 2), r(2)), None
    yield "batchnorm-train-bias-only", lambda x, b: batch_norm(True)(x, None, b), (
        r(4, 2), r(2)), None  # fmt: skip
    yield "batchnorm-eval-no-affine", batch_norm(False, running=running(2)), (r(3, 2, 2),), None
    yield "batchnorm-train-params-only", batch_norm(True), (r(3, 2, 2), r(2), r(2)), (
        False, True, True)  # fmt: skip
    yield "batchnorm-train-constant-channel", batch_norm(True, eps=0.5), (
        torch.ones(3, 2, 2, dtype=torch.float64), r(2), r(2)), None  # fmt: skip


def layer_norm(shape, eps=1e-5):
    return lambda x, weight=None, bias=None: F.layer_norm(x, shape, weight, bias, eps)


def group_norm(groups, eps=1e-5):
    return lambda x, weight=None, bias=None: F.group_norm(x, groups, weight, bias, eps)


CASES = [
    *batch_norm_cases(),
    ("layernorm-last", layer_norm((4,)), (r(2, 3, 4), r(4), r(4)), None),
    ("layernorm-two-dims", layer_norm((3, 4)), (r(2, 3, 4), r(3, 4), r(3, 4)), None),
    ("layernorm-unbatched", layer_norm((5,)), (r(5), r(5), r(5)), None),
    ("layernorm-no-affine", layer_norm((4,), eps=0.1), (r(3, 4),), None),
    ("layernorm-no-bias", layer_norm((4,)), (r(3, 4), r(4)), None),
    ("layernorm-params-only", layer_norm((4,)), (r(3, 4), r(4), r(4)), (False, True, True)),
    ("layernorm-all-leading", layer_norm((2, 3, 2)), (r(2, 3, 2), r(2, 3, 2), r(2, 3, 2)), None),
    ("groupnorm-2d", group_norm(2), (r(2, 4, 2, 3), r(4), r(4)), None),
    ("groupnorm-one-group", group_norm(1), (r(2, 3, 2, 2), r(3), r(3)), None),
    ("groupnorm-per-channel", group_norm(3), (r(1, 3, 5), r(3), r(3)), None),
    ("groupnorm-no-spatial", group_norm(2), (r(3, 4), r(4), r(4)), None),
    ("groupnorm-3d-no-affine", group_norm(2, eps=0.1), (r(2, 4, 2, 1, 2),), None),
    ("groupnorm-params-only", group_norm(2), (r(2, 4, 3), r(4), r(4)), (False, True, True)),
]


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)


def test_gauss_newton_diagonal_stays_non_negative_for_two_entries_per_group():
    """BatchNorm over two samples: each standardised entry is +-1 and the exact HesScaleGN
    diagonal w.r.t. the input is 0, which the closed form reaches by cancellation; float32
    rounding left entries near -1e-10 (timm's LeViT, batch 2). They are raised to 0 where the
    diagonal reaching the node is >= 0, and left alone where it is not."""
    import hesscale
    from hesscale.rules.normalization import standardization_input

    torch.manual_seed(0)
    negatives = 0
    for _ in range(5):
        model = torch.nn.Sequential(
            torch.nn.Linear(16, 64), torch.nn.BatchNorm1d(64), torch.nn.Hardswish(),
            torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 5),
        )  # fmt: skip
        x, y = torch.randn(2, 16), torch.randint(0, 5, (2,))
        hesscale.backward(F.cross_entropy(model(x), y), gn=True)
        negatives += sum(int((p.hesscale_gn < 0).sum()) for p in model.parameters())
    assert negatives == 0

    # a group whose h is negative keeps its (genuinely negative) values
    x = torch.randn(5, 1, dtype=torch.float64)
    y_hat = (x - x.mean()) / x.std(unbiased=False)
    invstd = torch.ones(1, 1, dtype=torch.float64)
    ones = torch.ones_like(y_hat)
    positive = standardization_input(ones, None, y_hat, invstd, (0,)).input
    negative = standardization_input(-ones, None, y_hat, invstd, (0,)).input
    assert (positive > 0).all()
    torch.testing.assert_close(negative, -positive)
