"""UPGD: steps against the formula by hand, the closure, checkpoints, errors, convergence."""

import copy

import pytest
import torch
from torch import nn

import hesscale
from hesscale.errors import HesScaleError
from hesscale.optim import UPGD


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    return model, lambda m: nn.functional.cross_entropy(m(x), y)


def by_hand(model, loss_fn, steps, lr, beta, sigma, wd, utility, noise_gen):
    """The UPGD update written out from its definition."""
    traces = [torch.zeros_like(p) for p in model.parameters()]
    for t in range(1, steps + 1):
        model.zero_grad()
        hesscale.backward(loss_fn(model))
        params = list(model.parameters())
        with torch.no_grad():
            hats = []
            for p, u in zip(params, traces, strict=True):
                U = -p.grad * p
                if utility == "second":
                    U = U + 0.5 * p.hesscale * p**2
                u.copy_(beta * u + (1 - beta) * U)
                hats.append(u / (1 - beta**t))
            eta = max(h.max() for h in hats)
            assert eta > 0
            for p, h in zip(params, hats, strict=True):
                noise = torch.randn(p.shape, generator=noise_gen)
                s = torch.sigmoid(h / eta)
                p.copy_(p * (1 - lr * wd) - lr * (p.grad + sigma * noise) * (1 - s))


@pytest.mark.parametrize("utility", ["first", "second"])
def test_steps_follow_the_formula(float64, utility):
    model, loss_fn = problem()
    reference = copy.deepcopy(model)
    opt = UPGD(
        model.parameters(),
        lr=0.1,
        beta_utility=0.9,
        sigma=0.01,
        weight_decay=0.1,
        utility=utility,
        generator=torch.Generator().manual_seed(3),
    )
    for _ in range(3):
        opt.zero_grad()
        hesscale.backward(loss_fn(model))
        opt.step()
    by_hand(reference, loss_fn, 3, 0.1, 0.9, 0.01, 0.1, utility, torch.Generator().manual_seed(3))
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert any(
        not torch.equal(p, q)
        for p, q in zip(model.parameters(), problem()[0].parameters(), strict=True)
    )


def test_useful_weights_move_less_than_sgd_would():
    model, loss_fn = problem()
    opt = UPGD(model.parameters(), lr=0.1, sigma=0.0)
    opt.zero_grad()
    hesscale.backward(loss_fn(model))
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, b, g in zip(model.parameters(), before, grads, strict=True):
        moved = (b - p.detach()).abs()
        assert (moved <= 0.1 * g.abs() + 1e-12).all()  # (1 - s) <= 1


def test_closure_equals_the_manual_loop():
    model, loss_fn = problem()
    other = copy.deepcopy(model)
    opt = UPGD(model.parameters(), generator=torch.Generator().manual_seed(0))
    opt2 = UPGD(other.parameters(), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        loss = opt.step(lambda: loss_fn(model))
        assert loss is not None
        opt2.zero_grad()
        hesscale.backward(loss_fn(other))
        opt2.step()
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    first = UPGD(model.parameters(), utility="first")
    first.step(lambda: loss_fn(model))  # plain backward suffices


def test_state_dict_round_trip_resumes_the_same_trajectory():
    model, loss_fn = problem()
    opt = UPGD(model.parameters(), sigma=0.0)
    for _ in range(2):
        opt.step(lambda: loss_fn(model))
    clone = copy.deepcopy(model)
    resumed = UPGD(clone.parameters(), sigma=0.0)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(2):
        opt.step(lambda: loss_fn(model))
        resumed.step(lambda: loss_fn(clone))
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p, q)


def test_converges_on_a_convex_problem():
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 1)
    model = nn.Linear(5, 1)
    opt = UPGD(model.parameters(), lr=0.1, sigma=1e-4)
    first = None
    for _ in range(300):
        loss = opt.step(lambda: nn.functional.mse_loss(model(x), y))
        first = first if first is not None else loss.item()
    assert loss.item() < 1e-3 * first


def test_missing_or_stale_diagonal_is_an_error():
    model, loss_fn = problem()
    opt = UPGD(model.parameters())
    loss_fn(model).backward()
    with pytest.raises(HesScaleError, match=r"no fresh p.hesscale: run hesscale.backward"):
        opt.step()
    opt.zero_grad()
    hesscale.backward(loss_fn(model))
    opt.step()
    opt.zero_grad()
    loss_fn(model).backward()  # plain backward: p.hesscale is the previous step's
    with pytest.raises(HesScaleError, match="no fresh p.hesscale"):
        opt.step()
    gn = UPGD(model.parameters(), diagonal="hesscale_gn")
    with pytest.raises(HesScaleError, match=r"hesscale.backward\(loss, gn=True\)"):
        gn.step()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": -1.0}, "lr"),
        ({"beta_utility": 1.0}, "beta_utility"),
        ({"sigma": -1}, "sigma"),
        ({"utility": "third"}, "utility='third'"),
        ({"diagonal": "diag_h"}, "diagonal='diag_h'"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UPGD(problem()[0].parameters(), **kwargs)
