"""Each estimator against a brute-force computation on a tiny model, in float64.

Exact methods agree to 1e-10 with dense autograd Hessians / Jacobians; stochastic ones agree
exactly for known probes and, averaged over many seeded draws, with the quantity they estimate.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backpack import backpack, extend
from backpack.extensions import KFAC
from torch import Tensor, nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call

from hesscale import UnsupportedModuleError
from hesscale.estimators import (
    Estimator,
    Hutchinson,
    SquaredGradient,
    Zero,
    bl89,
    exact_ggn,
    exact_hessian,
    ggn_mc,
    hesscale_estimator,
    hesscale_gn_estimator,
    kfac,
    standard_estimators,
)
from hesscale.estimators.backpack_based import kron_diagonal
from tests.oracle import definition_diag, exact_loss_diag, hesscale_by_definition, parameter_fn

DTYPE = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def tiny_problem(loss: str = "ce", batch: int = 2, seed: int = 0, act: type = nn.Tanh):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 3)).to(DTYPE)
    x = torch.randn(batch, 3, dtype=DTYPE)
    if loss == "ce":
        return model, nn.CrossEntropyLoss(), x, torch.randint(0, 3, (batch,))
    return model, nn.MSELoss(), x, torch.randn(batch, 3, dtype=DTYPE)


def flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def unflatten(model: nn.Module, theta: Tensor) -> dict[str, Tensor]:
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = theta[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def output_fn(model, x):
    return lambda theta: functional_call(model, unflatten(model, theta), (x,))


def dense_hessian(model, loss_fn, x, y) -> Tensor:
    f = output_fn(model, x)
    return hessian(lambda theta: loss_fn(f(theta), y), flat_params(model))


def dense_ggn_diag(model, loss_fn, x, y) -> Tensor:
    """diag(J^T H_out J) with the dense Jacobian of the outputs w.r.t. all parameters."""
    f = output_fn(model, x)
    theta = flat_params(model)
    out = f(theta).detach()
    jac = jacobian(f, theta).reshape(out.numel(), -1)
    h_out = hessian(lambda o: loss_fn(o, y), out).reshape(out.numel(), out.numel())
    return torch.einsum("kp,kl,lp->p", jac, h_out, jac)


def flat(diagonals: list[Tensor]) -> Tensor:
    return torch.cat([d.flatten() for d in diagonals])


def others_logsumexp(z: Tensor) -> Tensor:
    """logsumexp over the other classes, by a loop over classes (dim 1)."""
    cols = []
    for i in range(z.shape[1]):
        keep = [j for j in range(z.shape[1]) if j != i]
        cols.append(z[:, keep].logsumexp(1))
    return torch.stack(cols, 1)


def bl89_by_definition(layers: list[nn.Module], loss_fn, x: Tensor) -> dict[int, Tensor]:
    """The HesScale recursion by brute force, except that a Softmax / LogSoftmax layer is seen
    through the diagonal of its Jacobian: output i as a function of input i alone, the other
    inputs frozen at their current values. Gradients are the true ones."""
    acts = [x.detach()]
    for layer in layers:
        acts.append(layer(acts[-1]).detach())
    h = exact_loss_diag(loss_fn, acts[-1].requires_grad_(True))
    results = {}
    for i in reversed(range(len(layers))):
        layer, a_in = layers[i], acts[i].detach()
        rest = layer(a_in).detach().requires_grad_(True)
        z = rest
        for later in layers[i + 1 :]:
            z = later(z)
        g = torch.autograd.grad(loss_fn(z), rest)[0]
        for name, p in layer.named_parameters(recurse=False):
            results[id(p)] = definition_diag(parameter_fn(layer, name, a_in), p, h, g)
        fn = layer
        if isinstance(layer, nn.Softmax | nn.LogSoftmax):
            frozen = others_logsumexp(a_in)
            elementwise = torch.sigmoid if isinstance(layer, nn.Softmax) else F.logsigmoid
            fn = lambda u, c=frozen, e=elementwise: e(u - c)  # noqa: E731
        h = definition_diag(fn, a_in, h, g)
    return results


# --- exact methods --------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("act", [nn.Tanh, nn.Sigmoid])
def test_exact_hessian_is_the_dense_hessian_diagonal(loss, act):
    model, loss_fn, x, y = tiny_problem(loss, act=act)
    expected = dense_hessian(model, loss_fn, x, y).diagonal()
    got = flat(exact_hessian().estimate(model, loss_fn, x, y))
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_exact_ggn_is_the_dense_ggn_diagonal(loss):
    model, loss_fn, x, y = tiny_problem(loss, batch=3)
    expected = dense_ggn_diag(model, loss_fn, x, y)
    torch.testing.assert_close(flat(exact_ggn().estimate(model, loss_fn, x, y)), expected, **TOL)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("gauss_newton", [False, True])
def test_hesscale_estimators_follow_the_definition(loss, gauss_newton):
    model, loss_fn, x, y = tiny_problem(loss)
    est = hesscale_gn_estimator() if gauss_newton else hesscale_estimator()
    got = est.estimate(model, loss_fn, x, y)
    oracle = hesscale_by_definition(list(model), lambda out: loss_fn(out, y), x, gauss_newton)
    for p, d in zip(model.parameters(), got, strict=True):
        torch.testing.assert_close(d, oracle[id(p)], **TOL)


def test_squared_gradient_and_zero():
    model, loss_fn, x, y = tiny_problem("ce")
    theta = flat_params(model).requires_grad_(True)
    grad = torch.autograd.grad(loss_fn(output_fn(model, x)(theta), y), theta)[0]
    got = flat(SquaredGradient().estimate(model, loss_fn, x, y))
    torch.testing.assert_close(got, grad.square(), **TOL)
    assert torch.equal(flat(Zero().estimate(model, loss_fn, x, y)), torch.zeros_like(theta))


# --- BL89 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_bl89_cross_entropy_follows_the_elementwise_definition(batch):
    model, loss_fn, x, y = tiny_problem("ce", batch=batch)
    got = bl89().estimate(model, loss_fn, x, y)
    # CrossEntropyLoss = NLL(LogSoftmax(logits)); NLL is linear, so the recursion starts at 0
    chain = [*model, nn.LogSoftmax(dim=1)]
    oracle = bl89_by_definition(chain, lambda logp: F.nll_loss(logp, y), x)
    for p, d in zip(model.parameters(), got, strict=True):
        torch.testing.assert_close(d, oracle[id(p)], **TOL)


def test_bl89_puts_curvature_only_on_the_target_logit():
    model, _, x, y = tiny_problem("ce", batch=4)
    weight = torch.tensor([0.5, 2.0, 1.0], dtype=DTYPE)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    got = bl89().estimate(model, loss_fn, x, y)
    p = torch.softmax(model(x), 1).detach()
    p_target = p.gather(1, y[:, None])
    w = weight[y][:, None]
    expected = (F.one_hot(y, 3) * w * (p_target - p_target.square()) / w.sum()).sum(0)
    torch.testing.assert_close(got[-1], expected, **TOL)  # last layer's bias


def test_bl89_with_softmax_module_and_mse_follows_the_definition():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3), nn.Softmax(dim=1))
    model = model.to(DTYPE)
    x, y = torch.randn(2, 3, dtype=DTYPE), torch.rand(2, 3, dtype=DTYPE)
    loss_fn = nn.MSELoss()
    got = bl89().estimate(model, loss_fn, x, y)
    oracle = bl89_by_definition(list(model), lambda out: loss_fn(out, y), x)
    for p, d in zip(model.parameters(), got, strict=True):
        torch.testing.assert_close(d, oracle[id(p)], **TOL)


def test_bl89_log_softmax_nll_equals_cross_entropy():
    model, ce, x, y = tiny_problem("ce", batch=3)
    with_log_softmax = nn.Sequential(*model, nn.LogSoftmax(dim=1))
    a = bl89().estimate(model, ce, x, y)
    b = bl89().estimate(with_log_softmax, nn.NLLLoss(), x, y)
    torch.testing.assert_close(flat(a), flat(b), **TOL)


def test_bl89_equals_hesscale_without_softmax():
    model, loss_fn, x, y = tiny_problem("mse")
    a = bl89().estimate(model, loss_fn, x, y)
    b = hesscale_estimator().estimate(model, loss_fn, x, y)
    torch.testing.assert_close(flat(a), flat(b), **TOL)


def test_bl89_rejects_label_smoothing():
    model, _, x, y = tiny_problem("ce")
    with pytest.raises(UnsupportedModuleError, match="label_smoothing"):
        bl89().estimate(model, nn.CrossEntropyLoss(label_smoothing=0.1), x, y)


# --- KFAC -----------------------------------------------------------------------------------


def test_kron_diagonal_matches_the_explicit_kronecker_product():
    torch.manual_seed(0)
    factors = [torch.randn(n, n, dtype=DTYPE) for n in (2, 3, 4)]
    explicit = torch.kron(torch.kron(factors[0], factors[1]), factors[2]).diagonal()
    torch.testing.assert_close(kron_diagonal(factors), explicit, **TOL)
    with pytest.raises(ValueError, match="square"):
        kron_diagonal([torch.ones(2, 3)])


def test_kfac_estimate_is_the_diagonal_of_backpacks_kronecker_product():
    model, loss_fn, x, y = tiny_problem("ce", batch=3)
    torch.manual_seed(7)
    got = kfac(2).estimate(model, loss_fn, x, y)
    extend(model)
    extend(loss_fn)
    torch.manual_seed(7)
    with backpack(KFAC(mc_samples=2)):
        loss_fn(model(x), y).backward()
    for p, d in zip(model.parameters(), got, strict=True):
        explicit = p.kfac[0]
        for factor in p.kfac[1:]:
            explicit = torch.kron(explicit, factor)
        torch.testing.assert_close(d, explicit.diagonal().reshape(p.shape), **TOL)


# --- stochastic methods in expectation -------------------------------------------------------


def relative_l1(estimate: Tensor, target: Tensor) -> float:
    return float((estimate - target).abs().sum() / target.abs().sum())


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("make", [ggn_mc, kfac])
def test_monte_carlo_ggn_and_kfac_approach_the_exact_ggn(loss, make):
    # batch size 1: KFAC's factorisation of one example is exact, so it too estimates the GGN
    model, loss_fn, x, y = tiny_problem(loss, batch=1)
    exact = flat(exact_ggn().estimate(model, loss_fn, x, y))
    torch.manual_seed(0)
    many = flat(make(20000).estimate(model, loss_fn, x, y))
    few = flat(make(1).estimate(model, loss_fn, x, y))
    assert relative_l1(many, exact) < 0.02
    assert relative_l1(few, exact) > 0.2  # so the bound above is not vacuous


def test_kfac_equals_monte_carlo_ggn_for_one_example():
    # one example: diag(sum_v s_v s_v^T) x diag(x x^T) = sum_v s_v^2 x^2, draw for draw
    model, loss_fn, x, y = tiny_problem("ce", batch=1)
    torch.manual_seed(3)
    a = flat(kfac(4).estimate(model, loss_fn, x, y))
    torch.manual_seed(3)
    b = flat(ggn_mc(4).estimate(model, loss_fn, x, y))
    torch.testing.assert_close(a, b, **TOL)


def test_one_sample_monte_carlo_ggn_is_unbiased():
    model, loss_fn, x, y = tiny_problem("ce", batch=1)
    exact = flat(exact_ggn().estimate(model, loss_fn, x, y))
    torch.manual_seed(0)
    one = ggn_mc(1)
    mean = sum(flat(one.estimate(model, loss_fn, x, y)) for _ in range(200)) / 200
    assert relative_l1(mean, exact) < 0.1


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("samples", [3, Hutchinson.BATCHED_ABOVE + 1])  # looped and batched
def test_hutchinson_is_v_times_hessian_vector_product(loss, samples):
    model, loss_fn, x, y = tiny_problem(loss)
    hess = dense_hessian(model, loss_fn, x, y)
    est = Hutchinson(samples, generator=torch.Generator().manual_seed(5))
    got = est.estimate(model, loss_fn, x, y)
    est.generator.manual_seed(5)
    probes = est.probes(list(model.parameters()))
    v = torch.cat([pr.reshape(samples, -1) for pr in probes], 1)  # (probes, parameters)
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    expected = (v * (v @ hess)).mean(0)
    torch.testing.assert_close(flat(got), expected, **TOL)


def test_hutchinson_approaches_the_exact_hessian_diagonal():
    model, loss_fn, x, y = tiny_problem("ce")
    hess = dense_hessian(model, loss_fn, x, y)
    probes = 4000
    got = flat(Hutchinson(probes, torch.Generator().manual_seed(0)).estimate(model, loss_fn, x, y))
    # v_i (Hv)_i = H_ii + sum_{j != i} v_i v_j H_ij: mean H_ii, variance sum_{j != i} H_ij^2
    std = ((hess.square().sum(1) - hess.diagonal().square()) / probes).sqrt()
    assert torch.all((got - hess.diagonal()).abs() <= 5 * std + 1e-12)


# --- interface ------------------------------------------------------------------------------


def test_every_estimator_keeps_the_model_clean_and_matches_parameter_shapes():
    model, loss_fn, x, y = tiny_problem("ce")
    marker = [torch.full_like(p, 3.0) for p in model.parameters()]
    for p, m in zip(model.parameters(), marker, strict=True):
        p.grad = m.clone()
    before = {n: set(vars(p)) for n, p in model.named_parameters()}
    methods = standard_estimators(samples=2)
    assert len({m.name for m in methods}) == len(methods) == 13
    for method in methods:
        assert isinstance(method, Estimator)
        diagonals = method.estimate(model, loss_fn, x, y)
        for p, d, m in zip(model.parameters(), diagonals, marker, strict=True):
            assert d.shape == p.shape and d.dtype == p.dtype and not d.requires_grad
            assert torch.equal(p.grad, m), method.name
        assert {n: set(vars(p)) for n, p in model.named_parameters()} == before, method.name


def test_one_backprop_methods_are_the_papers_comparison_set():
    names = {m.name for m in standard_estimators(samples=5) if m.one_backprop}
    assert names == {
        "GGN-MC-1",
        "KFAC-1",
        "Hutchinson-1",
        "BL89",
        "SquaredGrad",
        "HesScale",
        "HesScaleGN",
    }


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_sample_counts_must_be_positive_integers(bad):
    for make in (ggn_mc, kfac, Hutchinson):
        with pytest.raises(ValueError, match="positive integer"):
            make(bad)
