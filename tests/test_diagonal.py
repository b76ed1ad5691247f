"""hesscale.diagonal: the data set's diagonal, batch by batch, against one pass over the union
and against the exact Hessian diagonal where HesScale is exact."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import hesscale
from tests.oracle import exact_loss_diag


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def batches(n: int = 3, size: int = 6):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, 4, generator=g), torch.randint(0, 3, (size,), generator=g))
        for _ in range(n)
    ]


@pytest.mark.parametrize("gn", [True, False])
def test_three_batches_equal_one_pass_over_their_union(float64, gn):
    model, data = mlp(), batches()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    result = hesscale.diagonal(model, data, loss_fn, gn=gn, progress=False)
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    hesscale.backward(loss_fn(model(x), y), gn=gn)
    variant = "hesscale_gn" if gn else "hesscale"
    for name, p in model.named_parameters():
        assert result[name].shape == p.shape and result[name].dtype == p.dtype
        torch.testing.assert_close(result[name], getattr(p, variant), rtol=1e-12, atol=1e-14)
        assert result[name].abs().sum() > 0


@pytest.mark.parametrize("gn", [True, False])
def test_equals_the_exact_hessian_diagonal_of_a_linear_model(float64, gn):
    # softmax regression: HesScale (and the GGN, the loss being the only nonlinearity) is exact
    torch.manual_seed(0)
    model, data = nn.Linear(4, 3), batches()
    result = hesscale.diagonal(
        model, data, nn.CrossEntropyLoss(reduction="sum"), gn=gn, progress=False
    )
    for name, p in model.named_parameters():

        def total(t, name=name):
            return sum(
                F.cross_entropy(functional_call(model, {name: t}, (x,)), y, reduction="sum")
                for x, y in data
            )

        torch.testing.assert_close(result[name], exact_loss_diag(total, p), rtol=1e-10, atol=1e-12)


def test_last_layer_of_an_mlp_is_exact_and_regression_loss(float64):
    model, data = mlp(), [(x, torch.randn(len(x), 3)) for x, _ in batches()]
    result = hesscale.diagonal(model, data, nn.MSELoss(reduction="sum"), gn=False, progress=False)
    last = model[2]
    for name in ("weight", "bias"):

        def total(t, name=name):
            return sum(
                F.mse_loss(
                    functional_call(last, {name: t}, (model[1](model[0](x)),)), y, reduction="sum"
                )
                for x, y in data
            )

        torch.testing.assert_close(
            result[f"2.{name}"], exact_loss_diag(total, getattr(last, name)), rtol=1e-10, atol=1e-12
        )


def test_leaves_gradients_and_diagonals_as_they_were():
    model, data = mlp(), batches()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    x, y = data[0]
    hesscale.backward(loss_fn(model(x), y), gn=True)
    before = {
        n: (p.grad, p.grad.clone(), p.hesscale_gn, p.hesscale_gn.clone())
        for n, p in model.named_parameters()
    }
    hesscale.diagonal(model, data, loss_fn, gn=True, progress=False)
    hesscale.diagonal(model, data, loss_fn, gn=False, progress=False)
    for n, p in model.named_parameters():
        grad, grad_value, diag, diag_value = before[n]
        assert p.grad is grad and torch.equal(p.grad, grad_value)
        assert p.hesscale_gn is diag and torch.equal(p.hesscale_gn, diag_value)
        assert not hasattr(p, "hesscale")
    # and gradient accumulation still continues into them
    hesscale.backward(loss_fn(model(x), y), gn=True)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.hesscale_gn, 2 * before[n][3])
    model.zero_grad()
    hesscale.diagonal(model, data, loss_fn, progress=False)
    assert all(p.grad is None for p in model.parameters())


def test_frozen_parameters_are_left_out_and_unreached_ones_are_zero():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.unused = mlp(), nn.Linear(2, 2)

        def forward(self, x):
            return self.net(x)

    model, data = WithUnused(), batches()
    model.net[0].weight.requires_grad_(False)
    result = hesscale.diagonal(model, data, nn.CrossEntropyLoss(reduction="sum"), progress=False)
    assert "net.0.weight" not in result and "net.0.bias" in result
    assert torch.equal(result["unused.weight"], torch.zeros(2, 2))


def test_a_function_loss_is_taken_as_written(float64):
    model, data = mlp(), batches()
    summed = hesscale.diagonal(model, data, nn.CrossEntropyLoss(reduction="sum"), progress=False)
    means = hesscale.diagonal(model, data, lambda f, y: F.cross_entropy(f, y), progress=False)
    for name in summed:
        torch.testing.assert_close(means[name] * 6, summed[name])


def test_progress_bar_only_when_asked(capsys):
    model, data = mlp(), batches()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    hesscale.diagonal(model, data, loss_fn, progress=False)
    assert capsys.readouterr().err == ""
    hesscale.diagonal(model, data, loss_fn, progress=True)
    assert "hesscale.diagonal" in capsys.readouterr().err


def test_runs_under_no_grad_and_with_a_dataloader():
    model, data = mlp(), batches()
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    with torch.no_grad():
        result = hesscale.diagonal(model, loader, loss_fn, progress=False)
    expected = hesscale.diagonal(model, data, loss_fn, progress=False)
    for name in expected:
        torch.testing.assert_close(result[name], expected[name])


@pytest.mark.parametrize(
    "loss_fn, match",
    [
        (nn.CrossEntropyLoss(), "reduction='mean'.*use reduction='sum'"),
        (nn.KLDivLoss(reduction="batchmean"), "reduction='batchmean'"),
        (nn.CrossEntropyLoss(reduction="none"), "reduction='none'"),
        (lambda f, y: F.cross_entropy(f, y, reduction="none"), "must return a scalar"),
    ],
)
def test_losses_that_are_not_a_sum_are_refused(loss_fn, match):
    with pytest.raises(ValueError, match=match):
        hesscale.diagonal(mlp(), batches(), loss_fn, progress=False)


def test_bad_arguments():
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    with pytest.raises(ValueError, match="no batch"):
        hesscale.diagonal(mlp(), [], loss_fn, progress=False)
    with pytest.raises(ValueError, match=r"batch 0 .*tuple of length 3.*\(x, y\) pairs"):
        hesscale.diagonal(mlp(), [(1, 2, 3)], loss_fn, progress=False)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        hesscale.diagonal(lambda x: x, batches(), loss_fn, progress=False)
    with pytest.raises(ValueError, match="gn="):
        hesscale.diagonal(mlp(), batches(), loss_fn, gn="both", progress=False)
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        hesscale.diagonal(frozen, batches(), loss_fn, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_models_device():
    model, data = mlp(), batches()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    expected = hesscale.diagonal(model, data, loss_fn, progress=False)
    result = hesscale.diagonal(model.cuda(), data, loss_fn, progress=False)
    for name in expected:
        assert result[name].is_cuda
        torch.testing.assert_close(result[name].cpu(), expected[name], rtol=1e-5, atol=1e-6)
