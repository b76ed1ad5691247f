"""The estimators for any nn.Module (hesscale.estimators.any_model) against brute force: dense
autograd Hessians and Jacobians of tiny residual networks and transformers, float64, 1e-10;
and against BackPACK's exact diagonals on the approximation-quality study's MLP."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian

import hesscale
from hesscale.errors import HesScaleError
from hesscale.estimators import (
    Estimator,
    any_model_estimators,
    exact_ggn,
    exact_hessian,
    hesscale_estimator,
    hesscale_gn_estimator,
)
from hesscale.estimators.any_model import (
    EngineHesScale,
    ExactGGNAutograd,
    ExactHessianAutograd,
    MonteCarloGGNAutograd,
    hessian_diagonal,
    sampled_targets,
)
from hesscale.experiments.networks import ResidualMLP, fully_connected
from hesscale.experiments.tasks import Task
from hesscale.experiments.transformer import RowTransformer
from tests.test_estimators import dense_ggn_diag, dense_hessian, flat, flat_params, output_fn

DTYPE = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def tiny(network: str, loss: str = "ce", batch: int = 2, seed: int = 0):
    """A tiny network of the study's kinds, a batch and a loss, in float64."""
    torch.manual_seed(seed)
    if network == "residual":
        model, x = ResidualMLP((3,), 3, width=4, depth=2), torch.randn(batch, 3)
    elif network == "transformer":  # 3 tokens (rows) of 2 pixels, 2 heads of width 2
        model, x = RowTransformer((1, 3, 2), 3, width=4, depth=1), torch.randn(batch, 6)
    else:
        model, x = fully_connected((3,), 3, [4], "tanh"), torch.randn(batch, 3)
    model, x = model.to(DTYPE), x.to(DTYPE)
    if loss == "ce":
        return model, nn.CrossEntropyLoss(), x, torch.randint(0, 3, (batch,))
    return model, nn.MSELoss(), x, torch.randn(batch, 3, dtype=DTYPE)


NETWORKS = ["residual", "transformer"]


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("network", NETWORKS)
def test_exact_hessian_is_the_dense_hessian_diagonal(network, loss):
    model, loss_fn, x, y = tiny(network, loss)
    expected = dense_hessian(model, loss_fn, x, y).diagonal()
    got = ExactHessianAutograd(chunk=7).estimate(model, loss_fn, x, y)  # several chunks
    torch.testing.assert_close(flat(got), expected, **TOL)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("network", NETWORKS)
def test_exact_ggn_is_the_dense_ggn_diagonal(network, loss):
    model, loss_fn, x, y = tiny(network, loss, batch=3)
    expected = dense_ggn_diag(model, loss_fn, x, y)
    got = ExactGGNAutograd().estimate(model, loss_fn, x, y)
    torch.testing.assert_close(flat(got), expected, **TOL)


def test_exact_ggn_keeps_negative_curvature_of_the_loss():
    """diag(J^T H J) for an output Hessian with negative eigenvalues, e.g. sum(-z^4)."""
    model, _, x, _ = tiny("residual")
    loss_fn = lambda z, y: -(z**4).sum()  # noqa: E731
    expected = dense_ggn_diag(model, loss_fn, x, None)
    assert expected.min() < 0
    got = ExactGGNAutograd().estimate(model, loss_fn, x, None)
    torch.testing.assert_close(flat(got), expected, **TOL)


class ThreeSquared(torch.autograd.Function):
    """3 x^2, with a backward that branches on the data (which vmap refuses)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 3 * x**2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if bool((grad == 0).all()):  # data-dependent control flow
            return torch.zeros_like(x)
        return 6 * x * grad


class Cube(torch.autograd.Function):
    """x^3, its derivative through ThreeSquared: second derivatives run that backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return ThreeSquared.apply(x) * grad


def test_exact_hessian_falls_back_to_a_loop_where_vmap_refuses_an_operation():
    torch.manual_seed(0)
    w = torch.randn(5, dtype=DTYPE, requires_grad=True)
    loss = (Cube.apply(w) * torch.arange(5.0, dtype=DTYPE)).sum() + (w.sin() ** 2).sum()
    with pytest.raises(RuntimeError, match="Batching rule"):  # what the fallback catches
        torch.autograd.grad(
            torch.autograd.grad(loss, w, create_graph=True),
            w,
            torch.eye(5, dtype=DTYPE),
            retain_graph=True,
            is_grads_batched=True,
        )
    estimator = ExactHessianAutograd()
    (got,) = hessian_diagonal(loss, [w], products=estimator.products)
    assert estimator.products.vmap is False
    x = w.detach()
    expected = 6 * x * torch.arange(5.0, dtype=DTYPE) + 2 * torch.cos(2 * x)
    torch.testing.assert_close(got, expected, **TOL)


# --- the study's MLP: the autograd references equal BackPACK's ---------------------------


def digits_example(loss: str):
    x, label = Task("digits", batch_size=1, seed=3).next_batch()
    x = x.flatten(1).to(DTYPE)
    if loss == "ce":
        return x, label
    return x, nn.functional.one_hot(label, 10).to(DTYPE)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_autograd_references_equal_backpack_on_the_study_mlp(loss):
    torch.manual_seed(0)
    model = fully_connected((64,), 10, [32] * 3, "tanh").to(DTYPE)
    loss_fn = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
    x, y = digits_example(loss)
    pairs = [(ExactHessianAutograd(), exact_hessian()), (ExactGGNAutograd(), exact_ggn())]
    pairs += [(EngineHesScale(), hesscale_estimator())]
    pairs += [(EngineHesScale(gauss_newton=True), hesscale_gn_estimator())]
    for ours, backpacks in pairs:
        expected = flat(backpacks.estimate(model, loss_fn, x, y))
        got = flat(ours.estimate(model, loss_fn, x, y))
        torch.testing.assert_close(got, expected, **TOL, msg=ours.name)


# --- GGN-MC ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_monte_carlo_ggn_is_the_squared_jacobian_product_of_the_sampled_residuals(loss, reduction):
    """Draw for draw: s = sqrt(m) d loss(z, sampled target)/dz, estimate = mean (J^T s)^2, with
    the same targets redrawn from the same generator and a dense Jacobian."""
    model, loss_fn, x, y = tiny("transformer", loss, batch=3)
    loss_fn.reduction = reduction
    samples = 3
    est = MonteCarloGGNAutograd(samples, generator=torch.Generator().manual_seed(4))
    got = flat(est.estimate(model, loss_fn, x, y))
    est.generator.manual_seed(4)
    z = model(x).detach()
    jac = jacobian(output_fn(model, x), flat_params(model)).reshape(z.numel(), -1)
    m = (z.numel() if loss == "mse" else len(y)) if reduction == "mean" else 1
    expected = 0
    for _ in range(samples):
        target = sampled_targets(loss_fn, z, y, est.generator)
        if loss == "ce":
            assert target.dtype == torch.int64 and target.shape == y.shape
            s = z.softmax(1) - nn.functional.one_hot(target, 3)
        else:
            s = 2 * (z - target)
        s = s / m**0.5  # = sqrt(m) * (d loss / dz), the loss dividing by m
        expected = expected + (s.reshape(1, -1) @ jac).square()[0] / samples
    torch.testing.assert_close(got, expected, **TOL)


def relative_l1(estimate: Tensor, target: Tensor) -> float:
    return float((estimate - target).abs().sum() / target.abs().sum())


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_monte_carlo_ggn_approaches_the_exact_ggn_for_a_batch(loss, reduction):
    model, loss_fn, x, y = tiny("residual", loss, batch=3)
    loss_fn.reduction = reduction
    exact = flat(ExactGGNAutograd().estimate(model, loss_fn, x, y))
    generator = torch.Generator().manual_seed(0)
    many = flat(MonteCarloGGNAutograd(4000, generator).estimate(model, loss_fn, x, y))
    few = flat(MonteCarloGGNAutograd(1, generator).estimate(model, loss_fn, x, y))
    assert relative_l1(many, exact) < 0.05
    assert relative_l1(few, exact) > 0.2  # so the bound above is not vacuous


def test_monte_carlo_ggn_keeps_ignored_targets_ignored():
    model, loss_fn, x, y = tiny("residual", "ce", batch=3)
    y[1] = loss_fn.ignore_index
    z = model(x).detach()
    target = sampled_targets(loss_fn, z, y, torch.Generator().manual_seed(0))
    assert target[1] == loss_fn.ignore_index and torch.all(target[[0, 2]] >= 0)
    exact = flat(ExactGGNAutograd().estimate(model, loss_fn, x, y))
    many = MonteCarloGGNAutograd(4000, torch.Generator().manual_seed(1))
    assert relative_l1(flat(many.estimate(model, loss_fn, x, y)), exact) < 0.05


@pytest.mark.parametrize(
    "loss_fn, message",
    [
        (nn.L1Loss(), "got L1Loss"),
        (nn.CrossEntropyLoss(label_smoothing=0.1), "label smoothing"),
        (nn.CrossEntropyLoss(reduction="none"), "reduction='none'"),
    ],
)
def test_monte_carlo_ggn_refuses_losses_without_a_sampler(loss_fn, message):
    model, _, x, y = tiny("residual", "ce")
    with pytest.raises(HesScaleError, match=message):
        MonteCarloGGNAutograd(1).estimate(model, loss_fn, x, y)


# --- HesScale through the engine ---------------------------------------------------------------


@pytest.mark.parametrize("gn", [False, True])
@pytest.mark.parametrize("network", NETWORKS)
def test_engine_hesscale_is_hesscale_backward_and_exact_in_the_head(network, gn):
    model, loss_fn, x, y = tiny(network, "ce")
    got = EngineHesScale(gauss_newton=gn).estimate(model, loss_fn, x, y)
    hesscale.backward(loss_fn(model(x), y), gn=gn)
    field = "hesscale_gn" if gn else "hesscale"
    for p, d in zip(model.parameters(), got, strict=True):
        assert torch.equal(d, getattr(p, field))
    exact = ExactHessianAutograd().estimate(model, loss_fn, x, y)
    torch.testing.assert_close(got[-2], exact[-2], **TOL)  # the linear head (cross-entropy)
    torch.testing.assert_close(got[-1], exact[-1], **TOL)


# --- interface -------------------------------------------------------------------------------


@pytest.mark.parametrize("network", NETWORKS)
def test_every_any_model_estimator_keeps_the_model_clean(network):
    model, loss_fn, x, y = tiny(network, "ce")
    marker = [torch.full_like(p, 3.0) for p in model.parameters()]
    for p, m in zip(model.parameters(), marker, strict=True):
        p.grad = m.clone()
    before = {n: set(vars(p)) for n, p in model.named_parameters()}
    methods = any_model_estimators(samples=2)
    names = [m.name for m in methods]
    assert names == [
        "Exact",
        "GGN",
        "GGN-MC-1",
        "Hutchinson-1",
        "GGN-MC-2",
        "Hutchinson-2",
        "SquaredGrad",
        "HesScale",
        "HesScaleGN",
        "Zero",
    ]
    for method in methods:
        assert isinstance(method, Estimator)
        diagonals = method.estimate(model, loss_fn, x, y)
        for p, d, m in zip(model.parameters(), diagonals, marker, strict=True):
            assert d.shape == p.shape and d.dtype == p.dtype and not d.requires_grad
            assert torch.equal(p.grad, m), method.name
        assert {n: set(vars(p)) for n, p in model.named_parameters()} == before, method.name


def test_unused_parameters_get_zero_diagonals():
    model, loss_fn, x, y = tiny("residual", "ce")
    model.unused = nn.Linear(2, 2).to(DTYPE)
    methods = [ExactHessianAutograd(), ExactGGNAutograd(), MonteCarloGGNAutograd(2)]
    for method in [*methods, EngineHesScale(), EngineHesScale(gauss_newton=True)]:
        diagonals = method.estimate(model, loss_fn, x, y)
        assert torch.equal(diagonals[-1], torch.zeros(2, dtype=DTYPE)), method.name
