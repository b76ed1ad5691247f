"""Unsupported models and calls fail loudly with a message naming what is wrong."""

import pytest
import torch
from backpack import backpack, extend
from torch import nn

from hesscale import HesScale, HesScaleError, HesScaleGN, UnsupportedModuleError
from hesscale.internals import saved_quantity_count
from hesscale.optim import AdaHesScale


def backward(model, loss_fn, x, y, extension=None, transform=lambda loss: loss):
    loss = transform(loss_fn(model(x), y))
    with backpack(extension or HesScale()):
        loss.backward()


X, Y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])


def test_unsupported_module_is_named_with_the_supported_list():
    model = extend(nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 2)))
    with pytest.raises(UnsupportedModuleError, match=r"no rule for PReLU.*Supported.*Linear"):
        backward(model, extend(nn.CrossEntropyLoss()), X, Y)


def test_unsupported_loss_is_named():
    model = extend(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(UnsupportedModuleError, match="HuberLoss"):
        backward(model, extend(nn.HuberLoss()), X, torch.randn(4, 2), HesScaleGN())


def test_model_not_extended():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(HesScaleError, match=r"4 parameter\(s\).*not extended"):
        backward(model, extend(nn.CrossEntropyLoss()), X, Y)


def test_part_of_model_not_extended():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), extend(nn.Linear(4, 2)))
    with pytest.raises(HesScaleError, match=r"2 parameter\(s\) \(shapes \(4, 3\), \(4,\)\)"):
        backward(model, extend(nn.CrossEntropyLoss()), X, Y)


def test_loss_not_extended():
    model = extend(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(HesScaleError, match="loss was not extended"):
        backward(model, nn.CrossEntropyLoss(), X, Y)


def test_loss_not_last_operation():
    model = extend(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(HesScaleError, match="must be the last operation"):
        backward(model, extend(nn.CrossEntropyLoss()), X, Y, transform=lambda loss: 2 * loss)


def test_reduction_none():
    model = extend(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(UnsupportedModuleError, match="reduction='none'"):
        backward(
            model,
            extend(nn.CrossEntropyLoss(reduction="none")),
            X,
            Y,
            transform=lambda loss: loss.sum(),
        )


class FunctionalReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def test_functional_operation_between_modules():
    with pytest.raises(HesScaleError, match="through ReluBackward0: not an extended nn.Module"):
        backward(extend(FunctionalReLU()), extend(nn.CrossEntropyLoss()), X, Y)


def test_module_reused_in_one_forward():
    act = nn.Tanh()
    model = extend(nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2)))
    with pytest.raises(HesScaleError, match="more than once"):
        backward(model, extend(nn.CrossEntropyLoss()), X, Y)


def test_batchnorm_in_train_mode():
    model = extend(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    with pytest.raises(UnsupportedModuleError, match=r"BatchNorm1d.*model.eval\(\)"):
        backward(model, extend(nn.CrossEntropyLoss()), X, Y)


def test_inplace_activation_fails():
    model = extend(nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)))
    with pytest.raises(RuntimeError, match="inplace|in-place"):
        backward(model, extend(nn.CrossEntropyLoss()), X, Y)


class Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.second(self.first(x).T)


def test_view_that_reorders_entries_between_modules():
    with pytest.raises(HesScaleError, match="reorders"):
        backward(extend(Transposed()), extend(nn.MSELoss()), torch.randn(3, 3), torch.randn(3, 3))


class Reshaped(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(2, 1)

    def forward(self, x):
        return self.second(self.first(x).view(-1, 2, 2))


def test_reshape_between_modules_is_fine_and_custom_containers_pass_through():
    torch.manual_seed(0)
    model = extend(Reshaped())
    backward(model, extend(nn.MSELoss()), torch.randn(5, 3), torch.randn(5, 2, 1))
    assert model.first.weight.hesscale.shape == (4, 3)
    assert model.first.weight.hesscale.abs().sum() > 0


def test_an_interrupted_backward_leaves_nothing_behind():
    """After an error mid-backward, the same extension instance must still check completeness
    (and must not reuse quantities the interrupted pass left behind)."""
    extension = HesScale()
    loss_fn = extend(nn.CrossEntropyLoss())
    bad = extend(nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 2)))
    with pytest.raises(UnsupportedModuleError):
        backward(bad, loss_fn, X, Y, extension)
    half_extended = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), extend(nn.Linear(4, 2)))
    with pytest.raises(HesScaleError, match="not extended"):
        backward(half_extended, loss_fn, X, Y, extension)
    good = extend(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    backward(good, loss_fn, X, Y, extension)
    assert saved_quantity_count(extension) == 0
    reused = [p.hesscale.clone() for p in good.parameters()]
    good.zero_grad()  # a fresh pass (without it, the diagonals sum like the gradients)
    backward(good, loss_fn, X, Y, HesScale())
    for p, expected in zip(good.parameters(), reused, strict=True):
        torch.testing.assert_close(p.hesscale, expected)


def test_two_losses_in_one_backward_each_start_the_recursion():
    """Two heads, two losses, one backward: the shared trunk collects both diagonals."""
    torch.manual_seed(1)
    trunk, head_a, head_b = (extend(nn.Linear(*shape)) for shape in [(3, 4), (4, 2), (4, 2)])
    ce, mse = extend(nn.CrossEntropyLoss()), extend(nn.MSELoss())
    target = torch.randn(4, 2)
    features = trunk(X)
    with backpack(HesScale()):
        (ce(head_a(features), Y) + mse(head_b(features), target)).backward()
    together = trunk.weight.hesscale.clone()
    separate = []
    for head, loss, y in [(head_a, ce, Y), (head_b, mse, target)]:
        trunk.zero_grad()  # each pass on its own (without it, the diagonals sum)
        with backpack(HesScale()):
            loss(head(trunk(X)), y).backward()
        separate.append(trunk.weight.hesscale.clone())
    assert separate[0].abs().sum() > 0 and separate[1].abs().sum() > 0
    torch.testing.assert_close(together, separate[0] + separate[1])


def tanh_mlp():
    torch.manual_seed(2)
    return extend(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))


def test_loss_not_last_operation_leaves_no_diagonal_behind():
    """The loss's incoming gradient is checked at the end of the pass (no host sync at its
    start); the diagonals computed with the wrong gradient are removed."""
    model = tanh_mlp()
    with pytest.raises(HesScaleError, match="must be the last operation"):
        backward(model, extend(nn.CrossEntropyLoss()), X, Y, transform=lambda loss: loss / 4)
    assert not any(hasattr(p, "hesscale") for p in model.parameters())


def test_second_backward_after_retain_graph_names_backpack_retain_graph():
    """Issue 9: the message blamed a module 'called more than once in one forward pass'."""
    model, loss_fn = tanh_mlp(), extend(nn.CrossEntropyLoss())
    loss = loss_fn(model(X), Y)
    with backpack(HesScale()):
        loss.backward(retain_graph=True)
    with pytest.raises(HesScaleError, match=r"backpack\(\.\.\., retain_graph=True\)"):
        with backpack(HesScale()):
            loss.backward()


def test_second_backward_works_when_backpack_retains_the_graph():
    model, loss_fn = tanh_mlp(), extend(nn.CrossEntropyLoss())
    loss = loss_fn(model(X), Y)
    with backpack(HesScale(), retain_graph=True):
        loss.backward(retain_graph=True)
    first = [p.hesscale.clone() for p in model.parameters()]
    model.zero_grad()  # the second pass on its own (without it, the diagonals sum)
    with backpack(HesScale()):
        loss.backward()
    for p, expected in zip(model.parameters(), first, strict=True):
        torch.testing.assert_close(p.hesscale, expected)


def test_module_reused_in_one_forward_is_named_also_when_backpack_retains_the_graph():
    act = nn.Tanh()
    model = extend(nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 4), act, nn.Linear(4, 2)))
    loss = extend(nn.CrossEntropyLoss())(model(X), Y)
    with pytest.raises(HesScaleError, match="more than once"):
        with backpack(HesScale(), retain_graph=True):
            loss.backward()


@pytest.mark.parametrize("how", ["backward-inputs", "autograd-grad"])
def test_backward_restricted_to_some_tensors_is_refused(how):
    """Issue 9: backward(inputs=...) said the parameters were 'not extended'."""
    model, loss_fn = tanh_mlp(), extend(nn.CrossEntropyLoss())
    loss = loss_fn(model(X), Y)
    with pytest.raises(HesScaleError, match=r"inputs=.*does not support"):
        with backpack(HesScale()):
            if how == "backward-inputs":
                loss.backward(inputs=list(model[2].parameters()))
            else:
                torch.autograd.grad(loss, list(model[2].parameters()))


def test_autograd_grad_of_every_parameter_still_works():
    model, loss_fn = tanh_mlp(), extend(nn.CrossEntropyLoss())
    with backpack(HesScale()):
        torch.autograd.grad(loss_fn(model(X), Y), list(model.parameters()))
    by_grad = [p.hesscale.clone() for p in model.parameters()]
    backward(model, loss_fn, X, Y)
    for p, expected in zip(model.parameters(), by_grad, strict=True):
        torch.testing.assert_close(p.hesscale, expected)


class PermutedCopy(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(8, 2)

    def forward(self, x):
        h = self.first(x).view(-1, 2, 2, 4)
        return self.second(h.permute(0, 2, 1, 3).reshape(-1, 8))  # permute, then a copy


def test_copy_that_reorders_between_modules_names_the_operations():
    with pytest.raises(HesScaleError, match="PermuteBackward0.*not an extended nn.Module"):
        backward(extend(PermutedCopy()), extend(nn.MSELoss()), X, torch.randn(2, 2))


def test_neither_model_nor_loss_extended_runs_nothing_and_the_optimizer_says_so():
    """Documented in the README: no hook of hesscale runs, so no error at backward and no field;
    the optimizers detect the missing field at step()."""
    model = nn.Sequential(nn.Linear(3, 2))
    opt = AdaHesScale(model.parameters())
    backward(model, nn.CrossEntropyLoss(), X, Y, opt.method)
    assert not hasattr(model[0].weight, "hesscale")
    with pytest.raises(HesScaleError, match="hesscale"):
        opt.step()
