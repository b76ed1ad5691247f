"""The precision policy (hesscale.rules.precision): float16 squares and sums in float32, the
result comes back in the parameter's dtype; bfloat16 is kept; mixed dtypes promote."""

import pytest
import torch
from backpack import backpack, extend
from torch import nn

from hesscale import HesScale, HesScaleGN
from hesscale.rules import conv, losses, matmul, normalization, pooling, precision, softmax
from hesscale.rules import elementwise as ew


def test_working_dtype():
    assert precision.working_dtype(torch.float16) == torch.float32
    assert precision.working_dtype(torch.bfloat16) == torch.bfloat16
    assert precision.working_dtype(torch.float64) == torch.float64
    assert precision.working_dtype(torch.bfloat16, torch.float32) == torch.float32
    assert precision.working_dtype(torch.float16, torch.bfloat16) == torch.float32


def test_promote_converts_only_floating_tensors_and_copies_nothing_needlessly():
    a, b = torch.ones(2, dtype=torch.float16), torch.ones(2)
    index = torch.arange(2)
    a2, b2, index2, none, number = precision.promote(a, b, index, None, 0.5)
    assert a2.dtype == torch.float32 and b2 is b and index2 is index
    assert none is None and number == 0.5
    bf = torch.ones(2, dtype=torch.bfloat16)
    assert precision.promote(bf)[0] is bf  # bfloat16 has float32's range: no upcast


def test_float16_rules_do_not_overflow_where_the_result_fits():
    x = torch.full((4, 3), 300.0, dtype=torch.float16)  # x^2 = 90000 > 65504
    h_out = torch.full((4, 2), 0.05, dtype=torch.float16)
    h = matmul.matmul_right(h_out, x, transposed=True).mT
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, torch.full((2, 3), 4 * 0.05 * 90000.0), rtol=1e-3, atol=0)
    bf = torch.full((4, 3), 300.0, dtype=torch.bfloat16)
    assert matmul.matmul_right(h_out.bfloat16(), bf, transposed=True).dtype == torch.bfloat16


def test_issue_reproducer_float16_linear_with_inputs_of_300():
    """Issue 9: nn.Linear(3, 2).half() with every input 300 gave hesscale = inf (about 2.1e4 in
    float32) while the gradient is finite."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.mul_(0.01)
    x, y = torch.full((4, 3), 300.0), torch.tensor([0, 1, 0, 1])
    results = {}
    for dtype in (torch.float32, torch.float16):
        model = extend(nn.Sequential(nn.Linear(3, 2)).to(dtype))
        model.load_state_dict({"0." + k: v for k, v in layer.state_dict().items()})
        loss = extend(nn.CrossEntropyLoss())(model(x.to(dtype)), y)
        with backpack(HesScale()):
            loss.backward()
        assert model[0].weight.grad.isfinite().all()
        results[dtype] = model[0].weight.hesscale
    half, single = results[torch.float16], results[torch.float32]
    assert half.dtype == torch.float16 and half.isfinite().all()
    assert single.max() > 2e4
    torch.testing.assert_close(half.float(), single, rtol=2e-3, atol=0)


def cnn():
    bn = nn.BatchNorm2d(3)
    bn.running_var.uniform_(0.5, 2)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        bn.eval(),
        nn.GELU(approximate="tanh"),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 2),
        nn.Sigmoid(),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
        nn.Softmax(dim=1),
        nn.Linear(5, 3),
    )


def _rule_calls():
    torch.manual_seed(3)
    r = lambda *shape: torch.rand(shape) + 0.5  # noqa: E731
    x4, h4, w4 = 300 * r(2, 3, 6, 6), r(2, 4, 4, 4), r(4, 3, 3, 3)
    geometry = conv.ConvGeometry(stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1))
    pooled = r(2, 3, 3, 3)
    indices = torch.nn.functional.max_pool2d(x4, 2, return_indices=True)[1]
    logits, probs, h2, g2 = 40 * r(5, 3), torch.softmax(r(5, 3), 1), r(5, 3), r(5, 3) - 1
    x2, w2, var, gamma = 300 * r(5, 4), 300 * r(3, 4), r(4), 300 * r(4)
    return {
        "linear_input": lambda c: matmul.matmul_left(c(h2), c(w2).mT),
        "linear_weight": lambda c: matmul.matmul_right(c(h2), c(x2), transposed=True),
        "linear_bias": lambda c: precision.upcast(c(h2)).sum(0),
        "conv_input": lambda c: conv.conv_input(c(h4), c(x4), c(w4), geometry),
        "conv_weight": lambda c: conv.conv_weight(c(h4), c(x4), c(w4), geometry),
        "conv_bias": lambda c: conv.conv_bias(c(h4), 2),
        "batchnorm_input": lambda c: normalization.batchnorm_eval_input(
            c(h4), c(var), 1e-5, c(gamma)
        ),
        "batchnorm_weight": lambda c: normalization.batchnorm_weight(c(h4), c(30 * h4)),
        "batchnorm_bias": lambda c: normalization.batchnorm_bias(c(h4)),
        "elementwise": lambda c: ew.elementwise_input(c(h2), c(g2), c(300 * h2), c(g2)),
        "gelu": lambda c: ew.elementwise_input(
            c(h2), c(g2), *ew.gelu_derivatives(c(x2[:, :3] - 450))
        ),
        "gelu_tanh": lambda c: ew.elementwise_input(
            c(h2), c(g2), *ew.gelu_derivatives(c(x2[:, :3] - 450), "tanh")
        ),
        "softmax": lambda c: softmax.softmax_input(c(probs), c(h2), c(g2), 1),
        "log_softmax": lambda c: softmax.log_softmax_input(c(probs), c(h2), c(g2), 1),
        "max_pool": lambda c: pooling.max_pool_input(c(pooled), indices, x4.shape, 2),
        "avg_pool": lambda c: pooling.avg_pool_input(
            c(pooled), c(x4), (2, 2), (2, 2), (0, 0), False, True, None
        ),
        "adaptive_avg_pool": lambda c: pooling.adaptive_avg_pool_input(c(pooled), c(x4), 2),
        "cross_entropy": lambda c: losses.cross_entropy_diag(
            c(logits), torch.tensor([0, 1, 2, 0, 1])
        ),
        "mse": lambda c: losses.mse_diag(c(h2), "sum", c(h2)),
        "bce": lambda c: losses.bce_with_logits_diag(c(logits), c(probs)),
        "gaussian_nll": lambda c: losses.gaussian_nll_diag(c(h2), c(g2), c(probs))[0],
    }


RULE_CALLS = _rule_calls()


@pytest.mark.parametrize("rule", RULE_CALLS)
def test_every_rule_computes_float16_in_float32(rule):
    """Each rule on float16 operands gives what it gives on the same values in float32."""
    half = RULE_CALLS[rule](lambda t: t.half())
    single = RULE_CALLS[rule](lambda t: t.half().float())
    assert half.dtype == torch.float32
    assert single.isfinite().all()
    torch.testing.assert_close(half, single, rtol=1e-6, atol=0)


def test_float16_network_stays_finite_where_float32_is_finite():
    """A float16 CNN with inputs of about 100 (squares beyond float16's range) through every rule
    family: finite float16 diagonals close to float32's on the same weights and inputs (the
    float16 forward pass itself differs in the third digit)."""
    torch.manual_seed(1)
    model32 = cnn()
    x = (100 * torch.rand(4, 2, 8, 8)).half()
    y = torch.randint(0, 3, (4,))
    model16 = cnn().half()
    model16.load_state_dict(model32.half().state_dict())
    model32 = model32.float()
    results = {}
    for dtype, model in [(torch.float32, extend(model32)), (torch.float16, extend(model16))]:
        loss = extend(nn.CrossEntropyLoss())(model(x.to(dtype)), y)
        with backpack(HesScale(), HesScaleGN()):
            loss.backward()
        results[dtype] = [(p.hesscale, p.hesscale_gn) for p in model.parameters()]
    for (h32, gn32), (h16, gn16) in zip(
        results[torch.float32], results[torch.float16], strict=True
    ):
        assert h16.dtype == torch.float16 and h16.isfinite().all() and gn16.isfinite().all()
        for a, b in [(h16, h32), (gn16, gn32)]:
            # 6e-8: float16's resolution near its smallest normal numbers
            assert (a.float() - b).abs().sum() <= 0.05 * b.abs().sum() + 6e-8 * b.numel()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_mixed_dtypes(dtype):
    """Under autocast activations are low precision while weights stay float32; the rules
    promote (this used to fail with 'expected m1 and m2 to have the same dtype')."""
    torch.manual_seed(2)
    model = extend(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    with torch.autocast("cpu", dtype=dtype):
        loss = extend(nn.CrossEntropyLoss())(model(x), y)
    with backpack(HesScale()):
        loss.backward()
    reference = extend(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    reference.load_state_dict(model.state_dict())
    with backpack(HesScale()):
        extend(nn.CrossEntropyLoss())(reference(x), y).backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert p.hesscale.dtype == torch.float32
        torch.testing.assert_close(p.hesscale, q.hesscale, rtol=5e-2, atol=1e-3)
