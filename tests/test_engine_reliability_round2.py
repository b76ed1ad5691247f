"""Issue 17 (reliability, round 2): one regression test per reproducer of the engine's edges:
confident softmax / sigmoid curvature, float32 overflow, gradient-changing hooks, accumulation
pairing, non-reentrant checkpointing, complex tensors, inputs=[non-leaf]."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from backpack import backpack, extend
from torch import nn
from torch.utils.checkpoint import checkpoint

import hesscale
from hesscale import HesScale
from hesscale.errors import HesScaleError
from tests.engine_checks import check_graph, node_names

# p (1 - p) of a confident softmax or sigmoid ---------------------------------------------------


def confident_softmax(gap: float) -> tuple[float, float]:
    """For logits (gap, 0, 0): the exact p_0 (1 - p_0) and p_1 (1 - p_1), from closed forms
    without cancellation (e = exp(-gap): p_0 = 1 / (1 + 2e), 1 - p_0 = 2e / (1 + 2e))."""
    e = math.exp(-gap)
    p0, q0 = 1 / (1 + 2 * e), 2 * e / (1 + 2 * e)
    p1 = e / (1 + 2 * e)
    return p0 * q0, p1 * (1 - p1)


def relative_error(got: torch.Tensor, exact: float) -> float:
    return abs(got.double().item() - exact) / exact


GAPS = [(torch.float32, 15.0), (torch.float32, 17.0), (torch.float32, 30.0),
        (torch.float64, 30.0), (torch.float64, 38.0)]  # fmt: skip


@pytest.mark.parametrize("dtype, gap", GAPS)
@pytest.mark.parametrize("loss", ["cross_entropy", "nll_after_log_softmax"])
def test_confident_cross_entropy_keeps_the_predicted_class(dtype, gap, loss):
    """Issue 17: F.cross_entropy on logits (17, 0, 0) gave b.hesscale[0] == 0 in float32 (exact
    8.28e-8); gap 15 had 17% error; float64 lost it from gap 38 on."""
    b = torch.zeros(3, dtype=dtype, requires_grad=True)
    logits = (torch.tensor([gap, 0.0, 0.0], dtype=dtype) + b)[None]
    target = torch.tensor([0])
    if loss == "cross_entropy":
        value = F.cross_entropy(logits, target)
    else:
        value = F.nll_loss(F.log_softmax(logits, 1), target)
    hesscale.backward(value, gn="both")
    exact0, exact1 = confident_softmax(gap)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for h in (b.hesscale, b.hesscale_gn):
        assert relative_error(h[0], exact0) < tolerance
        assert relative_error(h[1], exact1) < tolerance


@pytest.mark.parametrize("dtype, gap", GAPS)
def test_confident_cross_entropy_in_the_backpack_adaptor(dtype, gap):
    """The same through the BackPACK route: the bias of a Linear layer whose input is 0."""
    layer = extend(nn.Linear(2, 3).to(dtype))
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor([gap, 0.0, 0.0]))
    loss = extend(nn.CrossEntropyLoss())(layer(torch.zeros(1, 2, dtype=dtype)), torch.tensor([0]))
    with backpack(HesScale()):
        loss.backward()
    exact0, _ = confident_softmax(gap)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert relative_error(layer.bias.hesscale[0], exact0) < tolerance


@pytest.mark.parametrize("x", [17.0, 25.0, -25.0])
def test_confident_sigmoid_losses(x):
    """BCE with logits, its module in the BackPACK adaptor, and logsigmoid: s (1 - s) at
    x = 17 is 4.1e-8 (float32 gave 0, from 1 - s)."""
    exact = 1 / (2 + 2 * math.cosh(x))  # s (1 - s)
    b = torch.zeros(1, requires_grad=True)
    hesscale.backward(F.binary_cross_entropy_with_logits(b + x, torch.ones(1)))
    assert relative_error(b.hesscale[0], exact) < 1e-5
    b = torch.zeros(1, requires_grad=True)
    hesscale.backward(-F.logsigmoid(b + x).sum())
    assert relative_error(b.hesscale[0], exact) < 1e-5
    layer = extend(nn.Linear(1, 1))
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(x)
    loss = extend(nn.BCEWithLogitsLoss())(layer(torch.zeros(1, 1)), torch.ones(1, 1))
    with backpack(HesScale()):
        loss.backward()
    assert relative_error(layer.bias.hesscale[0], exact) < 1e-5


@pytest.mark.parametrize("module", [True, False])
def test_confident_softmax_in_the_middle_of_a_network(module):
    """softmax(v) followed by a linear read-out c . p: the curvature p_0 (1 - 2 p_0)(c_0 - s),
    s = sum_k p_k c_k, with c_0 - s = 1 - p_0 for c = (1, 0, 0): float32 gave 0 at gap 17."""
    gap = 17.0
    e = math.exp(-gap)
    p0, q0 = 1 / (1 + 2 * e), 2 * e / (1 + 2 * e)
    exact = p0 * (q0 - p0) * q0
    if module:
        layer = extend(nn.Linear(2, 3))
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.copy_(torch.tensor([gap, 0.0, 0.0]))
        model = extend(nn.Sequential(layer, nn.Softmax(1), nn.Linear(3, 1)))
        with torch.no_grad():
            model[2].weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
            model[2].bias.zero_()
        target = torch.full((1, 1), -0.5)
        loss = extend(nn.MSELoss(reduction="sum"))(model(torch.zeros(1, 2)), target)
        with backpack(HesScale()):
            loss.backward()
        # (p_0 + 0.5)^2: D = 2 and g = 2 (p_0 + 0.5) w.r.t. p_0, none w.r.t. p_1, p_2
        got, expected = layer.bias.hesscale[0], 2 * (p0 + 0.5) * exact + 2 * (p0 * q0) ** 2
    else:
        b = torch.zeros(3, requires_grad=True)
        probs = torch.softmax(torch.tensor([gap, 0.0, 0.0]) + b, 0)
        hesscale.backward(probs[0] * 1.0 + probs[1] * 0.0 + probs[2] * 0.0)
        got, expected = b.hesscale[0], exact
    assert abs(got.double().item() - expected) <= 1e-5 * abs(expected)


def test_confident_logsumexp():
    b = torch.zeros(3, requires_grad=True)
    hesscale.backward(torch.logsumexp(torch.tensor([17.0, 0.0, 0.0]) + b, 0))
    assert relative_error(b.hesscale[0], confident_softmax(17.0)[0]) < 1e-5


# float32 overflow ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route", ["engine", "backpack", "conv", "grouped-conv", "transposed-conv", "matmul"]
)
def test_an_overflowing_square_meets_a_zero_diagonal(route):
    """Issue 17: x * 1e19 through Linear and a saturated tanh: the gradient is 0 and so is the
    exact diagonal, but x^2 overflows float32 and h (0) * x^2 (inf) gave NaN."""
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4) * 1e19
    if route in ("conv", "grouped-conv", "transposed-conv"):
        layer = {
            "conv": nn.Conv2d(2, 4, 3),
            "grouped-conv": nn.Conv2d(4, 6, 3, groups=2),
            "transposed-conv": nn.ConvTranspose2d(2, 4, 3),
        }[route]
        x = torch.randn(1, layer.in_channels, 5, 5) * 1e19
        hesscale.backward(torch.tanh(layer(x)).sum())
    elif route == "matmul":
        w = layer.weight.detach().T.clone().requires_grad_()
        hesscale.backward(torch.tanh(x @ w).sum())
        assert (w.grad == 0).all() and torch.equal(w.hesscale, torch.zeros_like(w))
        return
    elif route == "engine":
        hesscale.backward(torch.tanh(layer(x)).sum())
    else:
        model = extend(nn.Sequential(layer, nn.Tanh(), nn.Linear(3, 1)))
        loss = extend(nn.MSELoss())(model(x), torch.zeros(2, 1))
        with backpack(HesScale()):
            loss.backward()
    assert (layer.weight.grad == 0).all()
    assert torch.equal(layer.weight.hesscale, torch.zeros_like(layer.weight))


@pytest.mark.parametrize("rows", [1, 64], ids=["factor-larger", "product-larger"])
@pytest.mark.parametrize("rule", ["left", "right", "right-transposed"])
def test_matrix_product_rules_survive_overflowing_squares_on_either_check(rule, rows):
    """rules.matmul checks the smaller of the factor and the product for overflow: both
    routes give the float64 result (rounded to float32) where it is finite, and 0 where a zero
    h meets an overflowing square."""
    from hesscale.rules.matmul import matmul_left, matmul_right

    torch.manual_seed(0)
    factor = torch.randn(16, 16) * 1e25  # squares 1e50: beyond float32
    factor[:, :8] = torch.randn(16, 8)  # ordinary entries beside them
    h = torch.rand(rows, 16) * 1e-30
    h[:, 1] = 0
    run = {
        "left": lambda h, f: matmul_left(h, f),
        "right": lambda h, f: matmul_right(h.T, f.T),
        "right-transposed": lambda h, f: matmul_right(h.T, f.T, transposed=True),
    }[rule]
    got = run(h, factor)
    exact = run(h.double(), factor.double())
    assert not got.isnan().any()
    finite = exact.abs() < torch.finfo(torch.float32).max
    torch.testing.assert_close(got[finite], exact[finite].float(), rtol=1e-5, atol=0)


def test_large_inputs_keep_a_finite_diagonal_where_it_is_finite():
    """x = 3e19 with h = 1e-12: x^2 = 9e38 overflows float32, h x^2 = 9e26 does not."""
    layer = nn.Linear(1, 1, bias=False)
    x = torch.full((1, 1), 3e19)
    with torch.no_grad():
        layer.weight.fill_(1e-25)
    hesscale.backward(1e-12 * layer(x).square().sum() / 2)
    torch.testing.assert_close(layer.weight.hesscale, torch.full((1, 1), 9e26), rtol=1e-5, atol=0)


# hooks ---------------------------------------------------------------------------------------


def two_layers():
    torch.manual_seed(3)
    return nn.Linear(4, 3), nn.Linear(3, 2), torch.randn(5, 4)


def test_read_only_hooks_keep_working():
    first, second, x = two_layers()
    hesscale.backward(second(torch.tanh(first(x))).square().sum())
    expected = first.weight.hesscale.clone()
    first.weight.grad = None
    seen = []
    h = torch.tanh(first(x))
    h.register_hook(lambda g: seen.append(g.shape))
    handle = second.register_full_backward_hook(lambda m, gi, go: seen.append(len(gi)))
    hesscale.backward(second(h).square().sum() + h.sum().square())  # h used twice
    handle.remove()
    assert len(seen) == 2
    first.weight.grad = None
    del first.weight.hesscale
    hesscale.backward(second(torch.tanh(first(x))).square().sum())
    assert torch.equal(first.weight.hesscale, expected)


def zero_first_sample(g):
    g = g.clone()
    g[0] = 0
    return g


@pytest.mark.parametrize("change", [lambda g: 2 * g, zero_first_sample], ids=["2g", "row"])
@pytest.mark.parametrize("uses", [1, 2])
def test_a_tensor_hook_that_changes_the_gradient_is_refused(uses, change):
    """Issue 17: h.register_hook(lambda g: 2 * g) after a tanh gave grad x2.00 but hesscale
    x2.07 (weight) and x3.63 (bias). A hook changing one sample of five is caught as well."""
    first, second, x = two_layers()
    h = torch.tanh(first(x))
    h.register_hook(change)
    loss = second(h).square().sum() + (h.sum().square() if uses == 2 else 0)
    with pytest.raises(HesScaleError, match="hook changed the gradient"):
        hesscale.backward(loss)
    assert not hasattr(first.weight, "hesscale")


def test_a_module_backward_hook_that_changes_the_gradient_is_refused():
    first, second, x = two_layers()
    second.register_full_backward_hook(lambda m, gi, go: tuple(2 * g for g in gi))
    with pytest.raises(HesScaleError, match="module's full backward hook"):
        hesscale.backward(second(torch.tanh(first(x))).square().sum())
    assert not hasattr(first.weight, "hesscale")


# accumulation pairing ------------------------------------------------------------------------


@pytest.mark.parametrize("between", ["clip_grad_norm_", "plain backward"])
def test_a_gradient_changed_between_accumulation_steps_is_refused(between):
    """Issue 17: with clip_grad_norm_ or a plain loss.backward() between two micro-batches,
    p.grad kept accumulating while p.hesscale silently started afresh."""
    first, second, x = two_layers()
    model = nn.Sequential(first, nn.Tanh(), second)
    hesscale.backward(model(x).square().sum())
    grads = [p.grad.clone() for p in model.parameters()]
    if between == "clip_grad_norm_":
        nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    else:
        model(x).square().sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(HesScaleError, match="changed since hesscale.backward"):
        hesscale.backward(model(x).square().sum())
    for p, grad in zip(model.parameters(), before, strict=True):  # refused before the pass
        assert torch.equal(p.grad, grad)
    model.zero_grad(set_to_none=False)  # zeroed in place: both start afresh
    hesscale.backward(model(x).square().sum())
    for p, grad in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, grad)


# errors before anything is written -----------------------------------------------------------


def test_non_reentrant_checkpointing_is_refused_before_anything_is_written():
    """Issue 17: checkpoint(f, x, use_reentrant=False) failed after part of the pass had run
    (b.weight.grad set, a.weight.grad None)."""
    a, b = nn.Linear(4, 4), nn.Linear(4, 2)
    x = torch.randn(3, 4)
    loss = checkpoint(lambda t: b(torch.tanh(t)), a(x), use_reentrant=False).square().sum()
    with pytest.raises(HesScaleError, match="use_reentrant=False"):
        hesscale.backward(loss)
    assert all(p.grad is None for p in (*a.parameters(), *b.parameters()))
    loss.backward()  # the graph is intact: plain autograd still runs it


def test_complex_tensors_are_refused_up_front():
    """Issue 17: complex tensors crashed inside a rule (torch.sign ... complex)."""
    z = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(HesScaleError, match="complex"):
        hesscale.backward(z.abs().sum())
    w = torch.randn(3, requires_grad=True)
    with pytest.raises(HesScaleError, match="complex"):
        hesscale.backward(torch.view_as_complex(torch.stack([w, w], -1)).abs().sum())
    assert w.grad is None


def test_inputs_may_name_a_non_leaf_tensor():
    """Issue 17: inputs=[h] for a non-leaf h set h.grad but no h.hesscale. It gets the diagonal
    of the loss w.r.t. h, the one a leaf in its place gets."""
    first, second, x = two_layers()
    h = torch.tanh(first(x))
    out = second(h) + h.prod(1, keepdim=True)
    hesscale.backward(F.mse_loss(out, torch.zeros_like(out)), gn="both", inputs=[h, first.weight])
    leaf = h.detach().requires_grad_()
    out = second(leaf) + leaf.prod(1, keepdim=True)
    hesscale.backward(F.mse_loss(out, torch.zeros_like(out)), gn="both")
    torch.testing.assert_close(h.grad, leaf.grad)
    assert torch.equal(h.hesscale, leaf.hesscale)
    assert torch.equal(h.hesscale_gn, leaf.hesscale_gn)
    assert first.weight.hesscale.shape == first.weight.shape


# operations that had no rule -----------------------------------------------------------------


@pytest.mark.usefixtures("float64")
def test_adaptive_pooling_over_tokens_of_a_transposed_tensor():
    """Issue 17: nn.AdaptiveAvgPool1d(1) on a transposed (B, T, D) tensor records
    AsStridedBackward1, which had no rule (a common pooling over tokens)."""
    torch.manual_seed(4)
    x = torch.randn(2, 5, 4)
    linear, head = nn.Linear(4, 6), nn.Linear(6, 3)
    params = {f"linear.{k}": v for k, v in linear.named_parameters()}
    params |= {f"head.{k}": v for k, v in head.named_parameters()}

    def loss_fn(p, x):
        tokens = F.linear(x, p["linear.weight"], p["linear.bias"])
        pooled = nn.AdaptiveAvgPool1d(1)(torch.tanh(tokens).transpose(1, 2)).squeeze(-1)
        logits = F.linear(pooled, p["head.weight"], p["head.bias"])
        return F.cross_entropy(logits, torch.tensor([0, 2])), (logits,)

    assert "AsStridedBackward1" in node_names(lambda: loss_fn(params, x)[0])
    check_graph(loss_fn, params, x)


@pytest.mark.usefixtures("float64")
def test_a_bilinear_layer_and_interpolation_in_a_network():
    """nn.Bilinear and F.interpolate (bilinear) inside a network, against the graph oracle."""
    torch.manual_seed(5)
    layer = nn.Bilinear(3, 4, 2)
    params = {k: v for k, v in layer.named_parameters()}
    a, b = torch.randn(5, 3), torch.randn(5, 4)

    def loss_fn(p, a, b):
        z = F.bilinear(torch.tanh(a), b, p["weight"], p["bias"])
        image = torch.sigmoid(z).reshape(1, 1, 5, 2)
        up = F.interpolate(image, size=(7, 3), mode="bilinear")
        return up.square().sum(), (up,)

    check_graph(loss_fn, params, a, b, name_output=True)


def test_an_operation_without_a_rule_is_refused_with_the_reason():
    x = torch.randn(5, 1, 3, requires_grad=True)
    loss = F.ctc_loss(x.log_softmax(2), torch.tensor([[1, 2]]), [x.shape[0]], [2])
    with pytest.raises(HesScaleError, match="ctc_loss has no rule"):
        hesscale.backward(loss)
    assert x.grad is None
