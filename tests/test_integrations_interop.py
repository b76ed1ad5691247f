"""hessian_list with the real pytorch_optimizer: SophiaH and AdaHessian take HesScale's
diagonal through step(hessian=...) exactly as if they had estimated it themselves."""

import pytest
import torch
from torch import nn

import hesscale
from hesscale.errors import HesScaleError
from hesscale.integrations.interop import hessian_list

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    return model, lambda m: nn.functional.cross_entropy(m(x), y)


@pytest.mark.parametrize("name", ["SophiaH", "AdaHessian"])
@pytest.mark.parametrize("variant", ["hesscale", "hesscale_gn"])
def test_the_optimizer_uses_the_given_diagonal(name, variant):
    model, loss_fn = problem()
    cls = getattr(pytorch_optimizer, name)
    opt = cls(model.parameters(), lr=0.01)
    opt.zero_grad()
    hesscale.backward(loss_fn(model), gn=variant == "hesscale_gn")
    diagonals = hessian_list(opt, variant)
    assert [h.shape for h in diagonals] == [p.shape for p in model.parameters()]
    assert all(h is getattr(p, variant) for h, p in zip(diagonals, model.parameters(), strict=True))
    opt.step(hessian=diagonals)
    for p, h in zip(model.parameters(), diagonals, strict=True):
        assert torch.equal(opt.state[p]["hessian"], h)  # what the update read


def test_sophia_averages_the_given_diagonal(float64):
    model, loss_fn = problem()
    opt = pytorch_optimizer.SophiaH(model.parameters(), lr=0.01, betas=(0.9, 0.99))
    opt.zero_grad()
    hesscale.backward(loss_fn(model))
    diagonals = [h.clone() for h in hessian_list(opt)]
    opt.step(hessian=hessian_list(opt))
    for p, h in zip(model.parameters(), diagonals, strict=True):
        # its moving average of the diagonal, from zero: (1 - beta2) h
        torch.testing.assert_close(opt.state[p]["hessian_moment"], 0.01 * h)


def test_parameters_without_gradient_get_zeros_and_missing_diagonals_are_named():
    model, loss_fn = problem()
    opt = pytorch_optimizer.SophiaH(model.parameters(), lr=0.01)
    model[2].weight.requires_grad_(False)
    hesscale.backward(loss_fn(model))
    diagonals = hessian_list(opt)
    assert torch.equal(diagonals[2], torch.zeros(2, 4))
    opt.step(hessian=diagonals)
    model.zero_grad()
    loss_fn(model).backward()
    del model[0].bias.hesscale
    with pytest.raises(HesScaleError, match=r"parameter 1 of param group 0 \(shape \(4,\)\)"):
        hessian_list(opt)
    with pytest.raises(ValueError, match="diagonal='diag_h'"):
        hessian_list(opt, "diag_h")
