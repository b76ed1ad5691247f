"""hesscale.optim: single steps against the update written out by hand, state_dict round trips,
convergence on a convex problem, and the errors users can hit."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
from backpack import backpack, extend
from torch import nn

import hesscale
import hesscale.optim.adahessian as adahessian_module
from hesscale import HesScaleError
from hesscale.optim import (
    AdaGGNMC,
    AdaHesScale,
    AdaHesScaleGN,
    AdaHessian,
    NonFiniteError,
    SophiaGN,
)

DTYPE = torch.float64


# the update, written out by hand ------------------------------------------------------------


def reference_steps(params0, grads, hs, *, lr, betas, eps, weight_decay=0.0, maximize=False,
                    preconditioner="adam", power=1.0, delta=None, max_scale=1.0, clip=None,
                    floor=None, variant=None):  # fmt: skip
    """Parameters after each step of the documented update, one group, plain arithmetic.

    grads[t][i], hs[t][i]: gradient and diagonal of parameter i at step t+1. Also returns the
    trust-region scale of each step. ``variant`` is ignored (pass clip and floor)."""
    b1, b2 = betas
    params = [p.clone() for p in params0]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    w = [torch.zeros_like(p) for p in params]
    trajectory, scales = [], []
    for t, (gs, hs_t) in enumerate(zip(grads, hs, strict=True), start=1):
        us, ks = [], []
        for i, (g, h) in enumerate(zip(gs, hs_t, strict=True)):
            g = -g if maximize else g
            m[i] = b1 * m[i] + (1 - b1) * g
            c = h * h if preconditioner == "adam" else h.abs()
            v[i] = b2 * v[i] + (1 - b2) * c
            w[i] = b2 * w[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            d = v_hat if preconditioner == "newton" else torch.sqrt(v_hat)
            d = d**power
            if floor is not None:
                d = torch.maximum(d, floor * torch.sqrt(w[i] / (1 - b2**t)))
            r = m_hat / (d + eps)
            if clip is not None:
                r = r.clamp(-clip, clip)
            us.append(lr * r)
            ks.append(torch.sqrt(v_hat) if preconditioner == "adam" else v_hat)
        s = 1.0
        if delta is not None:
            quadratic = sum(float((k * u * u).sum()) for k, u in zip(ks, us, strict=True))
            s = min(max_scale, math.sqrt(2 * delta / quadratic))
        scales.append(s)
        params = [p * (1 - lr * weight_decay) - s * u for p, u in zip(params, us, strict=True)]
        trajectory.append(params)
    return trajectory, scales


def random_problem(steps: int = 2, seed: int = 0):
    """Two parameters (a 2x3 weight, a bias) with random gradients and signed diagonals."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(2, 3), (2,)]
    params0 = [torch.randn(s, generator=gen, dtype=DTYPE) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=DTYPE) for s in shapes] for _ in range(steps)]
    hs = [[torch.randn(s, generator=gen, dtype=DTYPE) for s in shapes] for _ in range(steps)]
    return params0, grads, hs


def run_with_given_diagonals(opt_cls, params0, grads, hs, field="hesscale", **kwargs):
    """Drive an optimizer with hand-set p.grad and p.<field>; parameters after each step."""
    params = [nn.Parameter(p.clone()) for p in params0]
    opt = opt_cls(params, **kwargs)
    trajectory = []
    for gs, hs_t in zip(grads, hs, strict=True):
        for p, g, h in zip(params, gs, hs_t, strict=True):
            p.grad = g.clone()
            setattr(p, field, h.clone())
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory, opt


# the variants' options, spelled out for the reference (clip and floor by hand)
VARIANT_OPTIONS = {
    "paper": {"variant": "paper", "clip": None, "floor": None},
    "clipped": {"variant": "clipped", "clip": 0.5, "floor": None},  # clip < 1: it acts
    "floored": {"variant": "floored", "clip": None, "floor": 3.0},
    "both": {"variant": "paper", "clip": 0.5, "floor": 3.0},
}

TRUST_REGIONS = {
    "off": {},
    "active": {"delta": 1e-5, "max_scale": 1.0},  # scales the step down
    "capped": {"delta": 1e3, "max_scale": 2.0},  # would scale up a lot; capped at 2
}


@pytest.mark.parametrize("preconditioner", ["adam", "sqrt", "newton"])
@pytest.mark.parametrize("trust_region", list(TRUST_REGIONS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("variant", list(VARIANT_OPTIONS))
@pytest.mark.parametrize("foreach", [True, False])
def test_steps_equal_formula(preconditioner, trust_region, weight_decay, maximize, variant,
                             foreach):  # fmt: skip
    params0, grads, hs = random_problem(steps=2)
    options = dict(
        lr=0.01,
        betas=(0.8, 0.9),
        eps=1e-3,
        weight_decay=weight_decay,
        maximize=maximize,
        preconditioner=preconditioner,
        **TRUST_REGIONS[trust_region],
        **VARIANT_OPTIONS[variant],
    )
    expected, scales = reference_steps(params0, grads, hs, **options)
    if trust_region == "active":
        assert all(s < 0.9 for s in scales)  # the scaling really acts
    if trust_region == "capped":
        assert scales == [2.0, 2.0]
    got, _ = run_with_given_diagonals(AdaHesScale, params0, grads, hs, foreach=foreach, **options)
    for step in range(2):  # bias correction differs at steps 1 and 2
        for p_got, p_expected in zip(got[step], expected[step], strict=True):
            torch.testing.assert_close(p_got, p_expected, rtol=1e-12, atol=1e-14)


def test_step_one_is_signed_unit_step_for_adam():
    """At step 1 with eps=0, bias-corrected 'adam' gives u = lr * g / |h| exactly (the paper's
    variant), and lr * clamp(g / |h|, -1, 1) by default."""
    params0, grads, hs = random_problem(steps=1)
    got, _ = run_with_given_diagonals(
        AdaHesScale, params0, grads, hs, lr=0.1, eps=0.0, variant="paper"
    )
    clipped, _ = run_with_given_diagonals(AdaHesScale, params0, grads, hs, lr=0.1, eps=0.0)
    newton = [g / h.abs() for g, h in zip(grads[0], hs[0], strict=True)]
    assert any(bool((r.abs() > 1).any()) for r in newton)  # the clip acts
    for p0, p, q, r in zip(params0, got[0], clipped[0], newton, strict=True):
        torch.testing.assert_close(p, p0 - 0.1 * r, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(q, p0 - 0.1 * r.clamp(-1, 1), rtol=1e-12, atol=1e-14)


def sophia_reference(params0, grads, hs, *, lr, betas, rho, eps, weight_decay):
    """SophiaGN's documented update, plain arithmetic (no bias correction)."""
    b1, b2 = betas
    params = [p.clone() for p in params0]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for gs, hs_t in zip(grads, hs, strict=True):
        for i, (g, h) in enumerate(zip(gs, hs_t, strict=True)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * h
            ratio = (m[i] / torch.clamp(rho * v[i], min=eps)).clamp(-1, 1)
            params[i] = params[i] * (1 - lr * weight_decay) - lr * ratio
    return params


@pytest.mark.parametrize("foreach", [True, False])
def test_sophia_steps_equal_formula(foreach):
    params0, grads, hs = random_problem(steps=3)
    hs = [[h.abs() * 0.3 for h in hs_t] for hs_t in hs]  # some ratios beyond 1, some within
    hs[1][0][0, 0] = -1.0  # negative curvature: the floor eps, then the clip
    options = dict(lr=0.05, betas=(0.8, 0.9), rho=0.5, eps=1e-3, weight_decay=0.1)
    expected = sophia_reference(params0, grads, hs, **options)
    got, opt = run_with_given_diagonals(
        SophiaGN, params0, grads, hs, field="hesscale_gn", foreach=foreach, **options
    )
    for p, q in zip(got[-1], expected, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["rho"] == 0.5
    with pytest.raises(ValueError, match="SophiaGN: invalid rho"):
        SophiaGN([nn.Parameter(torch.zeros(1))], rho=0.0)


def test_variant_sets_defaults_and_explicit_options_win():
    p = [nn.Parameter(torch.zeros(1))]
    defaults = AdaHesScale(p).defaults
    assert (defaults["variant"], defaults["floor"], defaults["clip"]) == ("floored", 1.0, None)
    paper = AdaHesScaleGN(p, variant="paper").defaults
    assert (paper["floor"], paper["clip"]) == (None, None)
    clipped = AdaHesScale(p, variant="clipped").defaults
    assert (clipped["floor"], clipped["clip"]) == (None, 1.0)
    mixed = AdaHesScale(p, variant="paper", floor=2.0).defaults
    assert (mixed["floor"], mixed["clip"]) == (2.0, None)


def test_foreach_matches_per_parameter_on_mixed_dtypes_and_stale_steps():
    """Parameters of two dtypes (two buckets), one without a gradient at some steps (its own
    step count and bias corrections): the multi-tensor path equals the loop."""
    results = []
    for foreach in (True, False):
        gen = torch.Generator().manual_seed(3)
        params = [
            nn.Parameter(torch.randn(3, 2, generator=gen, dtype=torch.float64)),
            nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float32)),
            nn.Parameter(torch.randn(2, generator=gen, dtype=torch.float64)),
        ]
        opt = AdaHesScale(params, lr=0.05, foreach=foreach, weight_decay=0.01)
        for step in range(4):
            for i, p in enumerate(params):
                if i == 2 and step % 2:
                    p.grad = None
                    continue
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                p.hesscale = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            opt.step()
        results.append([p.detach().clone() for p in params])
    assert results[0][0].dtype == torch.float64 and results[0][1].dtype == torch.float32
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_floored_step_is_at_most_adams():
    """variant='floored': with |h| tiny, the step is Adam's (g / |g| at step 1)."""
    params0, grads, _ = random_problem(steps=1)
    tiny = [[1e-12 * torch.ones_like(g) for g in grads[0]]]
    got, _ = run_with_given_diagonals(
        AdaHesScale, params0, grads, tiny, lr=0.1, eps=0.0, variant="floored"
    )
    for p0, p, g in zip(params0, got[0], grads[0], strict=True):
        torch.testing.assert_close(p, p0 - 0.1 * g.sign(), rtol=1e-12, atol=1e-14)


def test_param_groups_use_their_own_hyperparameters():
    params0, grads, hs = random_problem(steps=2)
    params = [nn.Parameter(p.clone()) for p in params0]
    group_options = [dict(lr=0.01, betas=(0.8, 0.9)), dict(lr=0.3, betas=(0.5, 0.6))]
    opt = AdaHesScale(
        [{"params": [p], **o} for p, o in zip(params, group_options, strict=True)], eps=1e-3
    )
    for gs, hs_t in zip(grads, hs, strict=True):
        for p, g, h in zip(params, gs, hs_t, strict=True):
            p.grad, p.hesscale = g.clone(), h.clone()
        opt.step()
    for i, options in enumerate(group_options):
        expected, _ = reference_steps(
            [params0[i]],
            [[g[i]] for g in grads],
            [[h[i]] for h in hs],
            eps=1e-3,
            floor=1.0,
            **options,
        )
        torch.testing.assert_close(params[i].detach(), expected[-1][0], rtol=1e-12, atol=1e-14)


# reading the right diagonal from the BackPACK extensions ------------------------------------


def logistic_data(n: int = 60, d: int = 4, classes: int = 3, seed: int = 0):
    """Overlapping Gaussian blobs: logistic regression on them has a finite optimum."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=gen, dtype=DTYPE)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centers[y] + 1.5 * torch.randn(n, d, generator=gen, dtype=DTYPE)
    return x, y


def linear_model(d: int = 4, classes: int = 3, seed: int = 1):
    torch.manual_seed(seed)
    return extend(nn.Linear(d, classes).to(DTYPE)), extend(nn.CrossEntropyLoss())


def exact_hessian_diagonals(model: nn.Linear, loss_fn, x, y) -> list[torch.Tensor]:
    """Exact Hessian diagonal of the loss w.r.t. weight and bias, by dense autograd."""
    w, b = (p.detach() for p in (model.weight, model.bias))

    def loss_of(w_, b_):
        return loss_fn(x @ w_.T + b_, y)

    hess = torch.autograd.functional.hessian(loss_of, (w, b))
    return [
        hess[0][0].reshape(w.numel(), w.numel()).diagonal().reshape(w.shape),
        hess[1][1].diagonal(),
    ]


@pytest.mark.parametrize("opt_cls", [AdaHesScale, AdaHesScaleGN])
def test_first_step_uses_the_hessian_diagonal(opt_cls):
    """On logistic regression HesScale(GN) is exact, so step 1 is lr * g / |diag(H)|."""
    x, y = logistic_data()
    model, loss_fn = linear_model()
    h = exact_hessian_diagonals(model, loss_fn, x, y)
    params0 = [p.detach().clone() for p in model.parameters()]
    opt = opt_cls(model.parameters(), lr=0.1, eps=0.0, variant="paper")
    opt.zero_grad()
    with backpack(opt.method):
        loss_fn(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, p0, g, hp in zip(model.parameters(), params0, grads, h, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g / hp.abs(), rtol=1e-10, atol=1e-12)


def test_adaggnmc_reads_diag_ggn_mc():
    x, y = logistic_data()
    model, loss_fn = linear_model()
    params0 = [p.detach().clone() for p in model.parameters()]
    opt = AdaGGNMC(model.parameters(), lr=0.1, eps=0.0, mc_samples=2)
    assert opt.method.__class__.__name__ == "DiagGGNMC"
    opt.zero_grad()
    with backpack(opt.method):
        loss_fn(model(x), y).backward()
    seen = [(p.grad.clone(), p.diag_ggn_mc.clone()) for p in model.parameters()]
    opt.step()
    for p, p0, (g, h) in zip(model.parameters(), params0, seen, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g / h.abs(), rtol=1e-10, atol=1e-12)


# AdaHessian ----------------------------------------------------------------------------------


def quadratic(params, a_diag, cross: float = 0.0):
    """0.5 * sum(a * p^2) over all params, plus cross * <w[0], b> coupling two parameters."""
    w, b = params
    value = sum(0.5 * (a * p * p).sum() for a, p in zip(a_diag, params, strict=True))
    return value + cross * (w.reshape(-1)[: b.numel()] * b).sum()


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
@pytest.mark.parametrize("form", ["closure", "create_graph"])
@pytest.mark.parametrize("power", [1.0, 0.5])
def test_adahessian_on_a_diagonal_quadratic(form, power):
    """For a diagonal Hessian, |v * Hv| = |diag(H)| for every Rademacher v."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(2, 3), (2,)]
    a_diag = [torch.randn(s, generator=gen, dtype=DTYPE) for s in shapes]  # signed curvature
    params0 = [torch.randn(s, generator=gen, dtype=DTYPE) for s in shapes]
    params = [nn.Parameter(p.clone()) for p in params0]
    opt = AdaHessian(params, lr=0.05, betas=(0.8, 0.9), eps=1e-3, hessian_power=power)
    grads = []
    for _ in range(2):
        grads.append([a * p.detach() for a, p in zip(a_diag, params, strict=True)])
        if form == "closure":
            opt.step(lambda: quadratic(params, a_diag))
        else:
            opt.zero_grad()
            quadratic(params, a_diag).backward(create_graph=True)
            opt.step()
        assert all(p.grad is not None and p.grad.grad_fn is None for p in params)
    expected, _ = reference_steps(
        params0, grads, [a_diag, a_diag], lr=0.05, betas=(0.8, 0.9), eps=1e-3, power=power
    )
    for p, p_expected in zip(params, expected[-1], strict=True):
        torch.testing.assert_close(p.detach(), p_expected, rtol=1e-12, atol=1e-14)


def test_adahessian_hutchinson_uses_the_full_hessian(monkeypatch):
    """With a coupled quadratic, D = |v * (H v)| with cross-parameter terms, for the drawn v."""
    gen = torch.Generator().manual_seed(4)
    shapes = [(2, 3), (2,)]
    a_diag = [torch.rand(s, generator=gen, dtype=DTYPE) + 0.5 for s in shapes]
    params = [nn.Parameter(torch.randn(s, generator=gen, dtype=DTYPE)) for s in shapes]
    probes = [
        torch.tensor([[1.0, -1, 1], [-1, -1, 1]], dtype=DTYPE),
        torch.tensor([-1.0, 1], dtype=DTYPE),
    ]
    queue = list(probes)
    monkeypatch.setattr(adahessian_module, "rademacher", lambda shape, like: queue.pop(0))
    cross = 0.7
    # H v by hand: the coupling term cross * (w[0,0] b[0] + w[0,1] b[1]) adds cross * v_b to
    # H v at w[0,0], w[0,1] and cross * v_w to H v at b.
    hv_w = a_diag[0] * probes[0]
    hv_w[0, :2] += cross * probes[1]
    hv_b = a_diag[1] * probes[1] + cross * probes[0][0, :2]
    d = [(probes[0] * hv_w).abs(), (probes[1] * hv_b).abs()]
    with torch.no_grad():
        params0 = [p.clone() for p in params]
    grads = [torch.autograd.grad(quadratic(params, a_diag, cross), p)[0].detach() for p in params]
    opt = AdaHessian(params, lr=0.05, eps=1e-3)
    opt.step(lambda: quadratic(params, a_diag, cross))
    expected, _ = reference_steps(params0, [grads], [d], lr=0.05, betas=(0.9, 0.999), eps=1e-3)
    for p, p_expected in zip(params, expected[0], strict=True):
        torch.testing.assert_close(p.detach(), p_expected, rtol=1e-12, atol=1e-14)


def test_adahessian_spatial_average_for_conv_kernels():
    """A conv-shaped weight gets |diag(H)| averaged over its kernel dims; turning it off not."""
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(2, 1, 3, 3, generator=gen, dtype=DTYPE)
    p0 = torch.randn(2, 1, 3, 3, generator=gen, dtype=DTYPE)
    averaged = a.abs().mean(dim=(2, 3), keepdim=True).expand_as(a)
    for spatial_average, d in [(True, averaged), (False, a.abs())]:
        p = nn.Parameter(p0.clone())
        opt = AdaHessian([p], lr=0.05, eps=1e-3, spatial_average=spatial_average)
        opt.step(lambda p=p: 0.5 * (a * p * p).sum())
        expected, _ = reference_steps(
            [p0], [[a * p0]], [[d]], lr=0.05, betas=(0.9, 0.999), eps=1e-3
        )
        torch.testing.assert_close(p.detach(), expected[0][0], rtol=1e-12, atol=1e-14)


# closure forms -------------------------------------------------------------------------------


def test_closure_forms_agree_with_the_explicit_loop():
    x, y = logistic_data()
    results = []
    for form in ("explicit", "closure", "closure_with_backward"):
        model, loss_fn = linear_model()
        opt = AdaHesScale(model.parameters(), lr=0.1)
        for _ in range(3):
            if form == "explicit":
                opt.zero_grad()
                with backpack(opt.method):
                    loss_fn(model(x), y).backward()
                opt.step()
            elif form == "closure":
                loss = opt.step(lambda model=model, loss_fn=loss_fn: loss_fn(model(x), y))
                assert loss.dim() == 0
            else:

                def closure(model=model, loss_fn=loss_fn, opt=opt):
                    loss = loss_fn(model(x), y)
                    with backpack(opt.method):
                        loss.backward()
                    return loss

                opt.step(closure)
        results.append([p.detach().clone() for p in model.parameters()])
    for other in results[1:]:  # the closure runs hesscale.backward: equal up to round-off
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("opt_cls", [AdaHesScale, AdaHesScaleGN])
def test_any_model_with_hesscale_backward_closure_and_accumulation(opt_cls):
    """No extend: a residual model with functional operations; the explicit loop, the closure
    and two accumulated half-batches (mean loss / 2) take the same steps."""
    torch.manual_seed(11)
    x, y = torch.randn(8, 4, dtype=DTYPE), torch.randint(0, 3, (8,))

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            return self.out(x + torch.tanh(self.inner(x)))

    gn = opt_cls is AdaHesScaleGN
    results = []
    for form in ("explicit", "closure", "accumulate"):
        torch.manual_seed(12)
        model = Residual().to(DTYPE)
        opt = opt_cls(model.parameters(), lr=0.05)
        for _ in range(3):
            if form == "explicit":
                opt.zero_grad()
                hesscale.backward(nn.functional.cross_entropy(model(x), y), gn=gn)
                opt.step()
            elif form == "closure":
                opt.step(lambda model=model: nn.functional.cross_entropy(model(x), y))
            else:
                opt.zero_grad()
                for half in (slice(0, 4), slice(4, 8)):
                    loss = nn.functional.cross_entropy(model(x[half]), y[half]) / 2
                    hesscale.backward(loss, gn=gn)
                opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_optimizer_zero_grad_clears_the_diagonals():
    model, loss_fn = linear_model()
    x, y = logistic_data()
    opt = AdaHesScale(model.parameters())
    hesscale.backward(loss_fn(model(x), y))
    opt.zero_grad()
    assert all(p.grad is None and not hasattr(p, "hesscale") for p in model.parameters())


# state_dict ------------------------------------------------------------------------------------

OPTIMIZERS = {
    "AdaHesScale": lambda ps: AdaHesScale(ps, lr=0.1, delta=0.05),
    "AdaHesScale-paper": lambda ps: AdaHesScale(ps, lr=0.1, variant="paper"),
    "AdaHesScale-clipped-per-parameter": lambda ps: AdaHesScale(
        ps, lr=0.1, variant="clipped", foreach=False
    ),
    "SophiaGN": lambda ps: SophiaGN(ps, lr=0.01, weight_decay=0.1),
    "AdaHesScaleGN": lambda ps: AdaHesScaleGN(ps, lr=0.1, preconditioner="newton"),
    "AdaGGNMC": lambda ps: AdaGGNMC(ps, lr=0.1, weight_decay=0.01),
    "AdaHessian": lambda ps: AdaHessian(ps, lr=0.1),
}


def mlp(seed: int = 2):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DTYPE)
    return extend(model), extend(nn.CrossEntropyLoss())


def grouped(model: nn.Sequential):
    """Two param groups with their own lr and betas."""
    return [
        {"params": model[0].parameters(), "lr": 0.05, "betas": (0.8, 0.95)},
        {"params": model[2].parameters()},
    ]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip_resumes_the_same_trajectory(name):
    x, y = logistic_data(n=20)
    make = OPTIMIZERS[name]

    def train(model, loss_fn, opt, steps):
        for _ in range(steps):
            opt.step(lambda: loss_fn(model(x), y))

    model, loss_fn = mlp()
    opt = make(grouped(model))
    train(model, loss_fn, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    rng = torch.get_rng_state()
    train(model, loss_fn, opt, 3)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_model, resumed_loss_fn = mlp(seed=99)
    resumed_model.load_state_dict(saved["model"])
    resumed_opt = make(grouped(resumed_model))
    resumed_opt.load_state_dict(saved["opt"])
    assert resumed_opt.param_groups[0]["lr"] == 0.05
    assert resumed_opt.param_groups[0]["betas"] == (0.8, 0.95)
    torch.set_rng_state(rng)
    train(resumed_model, resumed_loss_fn, resumed_opt, 3)
    for a, b in zip(uninterrupted, resumed_model.parameters(), strict=True):
        torch.testing.assert_close(b.detach(), a, rtol=0, atol=0)


def test_state_dict_saved_before_the_variants_resumes_the_paper_update():
    """A state_dict of an earlier version (no clip, floor, foreach, variant in its groups)
    continues with the update it was saved with, the paper's."""
    params0, grads, hs = random_problem(steps=2)
    _, old = run_with_given_diagonals(AdaHesScale, params0, grads[:1], hs[:1], variant="paper")
    saved = copy.deepcopy(old.state_dict())  # as if saved to disk
    for group in saved["param_groups"]:
        for key in ("clip", "floor", "foreach", "variant"):
            del group[key]
    params = [nn.Parameter(p.detach().clone()) for p in old.param_groups[0]["params"]]
    resumed = AdaHesScale(params)  # default variant: floored
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["floor"] is None and resumed.param_groups[0]["clip"] is None
    for o in (old, resumed):
        for p, g, h in zip(o.param_groups[0]["params"], grads[1], hs[1], strict=True):
            p.grad, p.hesscale = g.clone(), h.clone()
        o.step()
    for a, b in zip(old.param_groups[0]["params"], params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# convergence on a convex problem ------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Tiny tensors: threads only cost time (a lot of it when the cores are busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def logistic_optimum():
    """Logistic regression's optimal loss, by LBFGS to machine precision."""
    x, y = logistic_data(n=120)
    model, loss_fn = linear_model()
    lbfgs = torch.optim.LBFGS(
        model.parameters(),
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        lbfgs.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        lbfgs.step(closure)
    with torch.no_grad():
        return x, y, float(loss_fn(model(x), y))


CONVEX = {
    "AdaHesScale": lambda ps: AdaHesScale(ps, lr=0.5),
    "AdaHesScale-sqrt": lambda ps: AdaHesScale(ps, lr=0.5, preconditioner="sqrt"),
    "AdaHesScale-newton": lambda ps: AdaHesScale(ps, lr=0.5, preconditioner="newton"),
    "AdaHesScaleGN": lambda ps: AdaHesScaleGN(ps, lr=0.5),
    "AdaGGNMC": lambda ps: AdaGGNMC(ps, lr=0.5),
    "AdaHessian": lambda ps: AdaHessian(ps, lr=0.5),
    "AdaHesScale-paper": lambda ps: AdaHesScale(ps, lr=0.5, variant="paper"),
    "AdaHesScale-clipped": lambda ps: AdaHesScale(ps, lr=0.5, variant="clipped"),
}


@pytest.mark.parametrize("name", list(CONVEX))
def test_convex_problem_reaches_the_optimum(name, logistic_optimum, one_thread):
    x, y, optimum = logistic_optimum
    model, loss_fn = linear_model()
    opt = CONVEX[name](model.parameters())
    with torch.no_grad():
        start = float(loss_fn(model(x), y))
    for _ in range(200):
        opt.step(lambda: loss_fn(model(x), y))
    with torch.no_grad():
        final = float(loss_fn(model(x), y))
    assert start - optimum > 0.1  # a real distance was covered
    assert final - optimum < 1e-6


# errors ------------------------------------------------------------------------------------


def test_missing_diagonal_names_the_fix():
    x, y = logistic_data()
    model, loss_fn = linear_model()
    opt = AdaHesScale(model.parameters())
    loss_fn(model(x), y).backward()  # not under opt.method
    with pytest.raises(HesScaleError, match=r"no 'hesscale'.*with backpack\(opt.method\)"):
        opt.step()


def test_wrong_extension_is_missing_its_field():
    x, y = logistic_data()
    model, loss_fn = linear_model()
    opt = AdaHesScaleGN(model.parameters())
    with backpack(AdaHesScale(model.parameters()).method):  # HesScale, not HesScaleGN
        loss_fn(model(x), y).backward()
    with pytest.raises(HesScaleError, match="no 'hesscale_gn'"):
        opt.step()


def test_stale_diagonal_is_refused():
    x, y = logistic_data()
    model, loss_fn = linear_model()
    opt = AdaHesScale(model.parameters())
    with backpack(opt.method):
        loss_fn(model(x), y).backward()
    opt.step()
    model.zero_grad()  # the model's zero_grad: p.hesscale stays
    loss_fn(model(x), y).backward()  # forgot the extension: p.hesscale is last step's
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(HesScaleError, match="already used by an earlier step"):
        opt.step()
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("what", ["hesscale", "grad"])
def test_non_finite_raises_by_default_and_can_skip(what):
    params0, grads, hs = random_problem(steps=1)
    bad_value = {"hesscale": hs, "grad": grads}[what][0][1]
    bad_value[0] = math.nan
    expected_word = {"hesscale": "Hessian-diagonal", "grad": "gradient"}[what]
    with pytest.raises(NonFiniteError, match=f"{expected_word}.*shape \\(2,\\).*on_nonfinite"):
        run_with_given_diagonals(AdaHesScale, params0, grads, hs)
    with pytest.warns(UserWarning, match="Skipping this step"):
        trajectory, opt = run_with_given_diagonals(
            AdaHesScale, params0, grads, hs, on_nonfinite="skip"
        )
    for p, p0 in zip(trajectory[0], params0, strict=True):
        assert torch.equal(p, p0)
    assert len(opt.state) == 0


INVALID = [
    ({"lr": -0.1}, "lr"),
    ({"lr": math.nan}, "lr"),
    ({"betas": (1.0, 0.9)}, "betas"),
    ({"betas": (0.9,)}, "betas"),
    ({"eps": -1e-8}, "eps"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"preconditioner": "diag"}, "preconditioner.*adam, sqrt, newton"),
    ({"delta": 0.0}, "delta"),
    ({"max_scale": 0.0}, "max_scale"),
    ({"on_nonfinite": "ignore"}, "on_nonfinite"),
    ({"maximize": 1}, "maximize"),
    ({"clip": 0.0}, "clip"),
    ({"clip": "1"}, "clip"),
    ({"floor": -1.0}, "floor"),
    ({"floor": math.inf}, "floor"),
    ({"foreach": "yes"}, "foreach"),
    ({"variant": "adam"}, "variant.*'floored', 'clipped', 'paper'"),
]


@pytest.mark.parametrize(("options", "key"), INVALID)
def test_invalid_hyperparameters(options, key):
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=f"AdaHesScale: invalid {key}"):
        AdaHesScale(params, **options)


def test_invalid_param_group_and_other_optimizers():
    with pytest.raises(ValueError, match="AdaHesScale: invalid lr"):
        AdaHesScale([{"params": [nn.Parameter(torch.zeros(2))], "lr": -1.0}])
    opt = AdaHesScale([nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="invalid betas"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "betas": (0.9, 2.0)})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="AdaHessian: invalid hessian_power"):
        AdaHessian([nn.Parameter(torch.zeros(2))], hessian_power=2.0)
    with pytest.raises(ValueError, match="AdaGGNMC: invalid mc_samples"):
        AdaGGNMC([nn.Parameter(torch.zeros(2))], mc_samples=0)


def test_closure_must_return_the_loss():
    model, loss_fn = linear_model()
    opt = AdaHesScale(model.parameters())
    with pytest.raises(ValueError, match="closure must return the loss.*float"):
        opt.step(lambda: 1.0)
    with pytest.raises(ValueError, match="without a graph"):
        opt.step(lambda: torch.tensor(1.0))


def test_a_closure_that_runs_backward_itself_is_told_what_is_wrong():
    """Issue 17: the error asked for a closure that returns the loss, which the user's closure
    did; what is wrong is its own loss.backward()."""
    x, y = logistic_data()
    model, loss_fn = linear_model()
    opt = AdaHesScale(model.parameters())

    def closure():
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(HesScaleError, match="closure ran the backward pass itself") as error:
        opt.step(closure)
    assert "returns the loss" not in str(error.value)
    opt.zero_grad()
    loss_fn(model(x), y).backward()  # without a closure: the usual advice
    with pytest.raises(HesScaleError, match="hesscale.backward"):
        opt.step()


def test_adahessian_needs_the_gradient_graph():
    x, y = logistic_data()
    model, loss_fn = linear_model()
    opt = AdaHessian(model.parameters())
    assert opt.method is None and opt.create_graph
    assert not AdaHesScale(model.parameters()).create_graph
    loss_fn(model(x), y).backward()  # no create_graph
    with pytest.raises(HesScaleError, match="create_graph=True"):
        opt.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_step_matches_cpu():
    x, y = logistic_data()
    results = []
    for device in ("cpu", "cuda"):
        model, loss_fn = linear_model()
        model = model.to(device)
        opt = AdaHesScale(model.parameters(), lr=0.1, delta=0.05)
        xd, yd = x.to(device), y.to(device)
        for _ in range(3):
            opt.step(lambda m=model, f=loss_fn, xd=xd, yd=yd: f(m(xd), yd))
        assert all(s["exp_avg"].device.type == device for s in opt.state.values())
        results.append([p.detach().cpu() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_deepcopy_and_repr():
    opt = AdaHesScale([nn.Parameter(torch.zeros(2))], lr=0.3)
    clone = copy.deepcopy(opt)
    assert clone.param_groups[0]["lr"] == 0.3
    assert "preconditioner" in repr(opt)


def test_pickled_optimizer_keeps_its_extension_and_continues_alike():
    params0, grads, hs = random_problem(steps=2)
    _, opt = run_with_given_diagonals(AdaHesScale, params0, grads[:1], hs[:1])
    clone = pickle.loads(pickle.dumps(opt))
    assert type(clone.method).__name__ == "HesScale"
    for o in (opt, clone):
        for p, g, h in zip(o.param_groups[0]["params"], grads[1], hs[1], strict=True):
            p.grad, p.hesscale = g.clone(), h.clone()
        o.step()
    for a, b in zip(opt.param_groups[0]["params"], clone.param_groups[0]["params"], strict=True):
        assert torch.equal(a, b)


def test_sparse_gradients_are_refused():
    p = nn.Parameter(torch.zeros(3, dtype=DTYPE))
    opt = AdaHesScale([p])
    p.grad = torch.zeros(3, dtype=DTYPE).to_sparse()
    p.hesscale = torch.ones(3, dtype=DTYPE)
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize("opt_cls", [AdaHesScale, AdaHesScaleGN, AdaGGNMC, AdaHessian])
def test_default_hyperparameters_train_the_example_mlp(opt_cls, one_thread):
    """The README example's network, default step size, a small fixed batch: the loss drops."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 128), nn.Sigmoid(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10)
    )
    model, loss_fn = extend(model), extend(nn.CrossEntropyLoss())
    x = torch.randn(32, 6)
    y = (x @ torch.randn(6, 10)).argmax(1)  # labels a linear teacher gives: learnable
    opt = opt_cls(model.parameters())
    losses = [float(opt.step(lambda: loss_fn(model(x), y)).detach()) for _ in range(60)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]


def test_optimizers_share_one_constructor_and_one_rademacher_helper():
    """Every option lives in DiagonalAdam.__init__; subclasses add only their own."""
    import hesscale.estimators
    from hesscale.experiments.learners import hyperparameter_names
    from hesscale.optim import AdaGGNMC, AdaHesScale, AdaHesScaleGN, AdaHessian
    from hesscale.optim import adahessian as adahessian_module

    p = [nn.Parameter(torch.zeros(3))]
    shared = set(AdaHesScale(p).defaults)
    assert set(AdaHesScaleGN(p).defaults) == shared and set(AdaGGNMC(p).defaults) == shared
    assert set(AdaHessian(p).defaults) == shared - {"variant"} | {"spatial_average"}
    ggnmc = AdaGGNMC(p, 0.01, mc_samples=3, preconditioner="sqrt")  # lr positional, as before
    assert ggnmc.defaults["lr"] == 0.01 and ggnmc.defaults["preconditioner"] == "sqrt"
    assert ggnmc.mc_samples == 3 and type(ggnmc.method).__name__ == "DiagGGNMC"
    names = hyperparameter_names("adaggnmc")
    assert {"mc_samples", "lr", "betas", "preconditioner", "delta", "on_nonfinite"} <= set(names)
    assert adahessian_module.rademacher is hesscale.estimators.autograd_based.rademacher
