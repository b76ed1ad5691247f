"""Mixed precision: GradScaler's scaled loss scales the diagonal like the gradient; both are
unscaled together (scaler.step alone, or after scaler.unscale_) and infs skip the step."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hesscale
from hesscale.optim import AdaHesScale, AdaHesScaleGN

pytestmark = pytest.mark.filterwarnings("ignore:GradScaler is going to stop passing itself")


def setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    return model, x, y


@pytest.mark.parametrize("opt_cls", [AdaHesScale, AdaHesScaleGN])
@pytest.mark.parametrize("unscale_first", [False, True])
def test_scaled_steps_equal_unscaled_steps(opt_cls, unscale_first):
    gn = opt_cls is AdaHesScaleGN
    model, x, y = setup()
    opt = opt_cls(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        hesscale.backward(F.cross_entropy(model(x), y), gn=gn)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
    expected = [p.detach().clone() for p in model.parameters()]

    model, x, y = setup()
    opt = opt_cls(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for _ in range(3):
        opt.zero_grad()
        hesscale.backward(scaler.scale(F.cross_entropy(model(x), y)), gn=gn)
        if unscale_first:
            scaler.unscale_(opt)
        else:
            for p in model.parameters():  # clipping needs unscaled gradients: do it by hand
                p.grad.div_(scaler.get_scale())
                setattr(p, opt.savefield, getattr(p, opt.savefield) / scaler.get_scale())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        if not unscale_first:  # scale back up, so that scaler.step unscales once more
            for p in model.parameters():
                p.grad.mul_(scaler.get_scale())
                setattr(p, opt.savefield, getattr(p, opt.savefield) * scaler.get_scale())
        scaler.step(opt)
        scaler.update()
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-7)


def test_infs_skip_the_step_and_lower_the_scale():
    model, x, y = setup()
    opt = AdaHesScale(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    hesscale.backward(scaler.scale(F.cross_entropy(model(x), y)))
    model[0].weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0**10
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)
    assert not opt.state  # nothing was updated


def test_grad_scaler_passes_itself_to_the_optimizer():
    """The protocol hesscale relies on (hesscale.internals.unscale_through)."""
    seen = {}

    class Spy(AdaHesScale):
        def step(self, closure=None, grad_scaler=None):
            seen["grad_scaler"] = grad_scaler
            return super().step(closure, grad_scaler)

    model, x, y = setup()
    opt = Spy(model.parameters())
    scaler = torch.amp.GradScaler("cpu")
    hesscale.backward(scaler.scale(F.cross_entropy(model(x), y)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scaler.step(opt)
    assert seen["grad_scaler"] is scaler


# torch.autocast (bfloat16 on the CPU) -----------------------------------------------------------

BF16_RELATIVE_ERROR = 0.1  # measured worst case over the parameters: MLP 0.007, CNN 0.05, GPT 0.04


def _mlp_problem():
    model = nn.Sequential(
        nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 5)
    )
    x, y = torch.randn(16, 20), torch.randint(0, 5, (16,))
    return model, lambda m: F.cross_entropy(m(x), y)


def _cnn_problem():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5),
    )  # fmt: skip
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    return model, lambda m: F.cross_entropy(m(x), y)


def _gpt_problem():
    from hesscale.experiments.transformer import GPT, SequenceCrossEntropy

    model = GPT(vocab=64, length=16, width=32, depth=2, heads=4)
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    return model, lambda m: SequenceCrossEntropy()(m(x), y)


@pytest.mark.parametrize("problem", [_mlp_problem, _cnn_problem, _gpt_problem])
def test_bfloat16_autocast_stays_close_to_float32(problem):
    """Under bfloat16 autocast the rules run on the bfloat16 activations; the diagonals are
    stored in the parameters' float32 and stay within BF16_RELATIVE_ERROR of float32's."""
    import copy

    torch.manual_seed(0)
    model, loss_of = problem()
    reference = copy.deepcopy(model)
    hesscale.backward(loss_of(reference), gn="both")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_of(model)
    hesscale.backward(loss, gn="both")
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        for field in ("hesscale", "hesscale_gn"):
            got, expected = getattr(p, field), getattr(q, field)
            assert got.dtype == torch.float32
            assert (got - expected).norm() <= BF16_RELATIVE_ERROR * expected.norm()
