"""hesscale.integrations.laplace against the real laplace-torch: the same diagonal as its exact
GGN backends where HesScaleGN is exact, and Laplace(...).fit + predictives on a residual network
its BackPACK backend refuses."""

import pytest
import torch
from torch import nn

laplace = pytest.importorskip("laplace")
from laplace import Laplace  # noqa: E402
from laplace.curvature import BackPackGGN, CurvlinopsGGN  # noqa: E402

import hesscale  # noqa: E402
from hesscale.integrations.laplace import HesScaleGGN, HesScaleHessian  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def loader(likelihood: str, n: int = 40, batch_size: int = 16):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g)
    y = (
        torch.randint(0, 3, (n,), generator=g)
        if likelihood == "classification"
        else (torch.randn(n, 3, generator=g))
    )
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def last_linear_only() -> nn.Module:
    """A model whose only parameters are its last Linear layer."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Tanh(), nn.Linear(5, 3))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(5, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.out(torch.tanh(h + self.block(h)))


def fitted_H(model, likelihood, backend, subset="all", **kwargs):
    la = Laplace(
        model,
        likelihood,
        subset_of_weights=subset,
        hessian_structure="diag",
        backend=backend,
        **kwargs,
    )
    la.fit(loader(likelihood))
    return la


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("exact", [CurvlinopsGGN, BackPackGGN])
def test_same_diagonal_as_the_exact_ggn_backends_on_the_last_layer(float64, likelihood, exact):
    ours = fitted_H(last_linear_only(), likelihood, HesScaleGGN)
    theirs = fitted_H(last_linear_only(), likelihood, exact)
    torch.testing.assert_close(ours.H, theirs.H, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-12, atol=0)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
@pytest.mark.parametrize("exact", [CurvlinopsGGN, BackPackGGN])
def test_last_layer_laplace_equals_the_exact_ggn_backend(float64, likelihood, exact):
    ours = fitted_H(Residual(), likelihood, HesScaleGGN, subset="last_layer")
    theirs = fitted_H(Residual(), likelihood, exact, subset="last_layer")
    assert ours.H.shape == (27,)
    torch.testing.assert_close(ours.H, theirs.H, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "likelihood, factor, loss_fn",
    [
        ("classification", 1.0, nn.CrossEntropyLoss(reduction="sum")),
        ("regression", 0.5, nn.MSELoss(reduction="sum")),
    ],
)
@pytest.mark.parametrize("backend, gn", [(HesScaleGGN, True), (HesScaleHessian, False)])
def test_all_weights_of_a_residual_network_fit_and_predict(
    float64, likelihood, factor, loss_fn, backend, gn
):
    model = Residual()
    # the Hessian diagonal of an untrained network has negative entries: a prior that keeps
    # the posterior precision positive
    la = fitted_H(model, likelihood, backend, prior_precision=100.0)
    diagonal = hesscale.diagonal(model, loader(likelihood), loss_fn, gn=gn, progress=False)
    torch.testing.assert_close(la.H, factor * torch.cat([d.flatten() for d in diagonal.values()]))
    x = loader(likelihood).dataset.tensors[0][:4]
    if likelihood == "classification":
        for kwargs in (
            {"pred_type": "nn", "link_approx": "mc", "n_samples": 20},
            {"pred_type": "glm", "link_approx": "probit"},
        ):
            probs = la(x, **kwargs)
            assert probs.shape == (4, 3)
            torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    else:
        mean, var = la(x, pred_type="glm")
        assert mean.shape == (4, 3) and (var.diagonal(dim1=-2, dim2=-1) > 0).all()
    samples = la.predictive_samples(x, pred_type="nn", n_samples=5)
    assert samples.shape == (5, 4, 3) and torch.isfinite(samples).all()


def test_the_backpack_backend_refuses_that_residual_network():
    with pytest.raises(NotImplementedError, match="Residual"):
        fitted_H(Residual(), "classification", BackPackGGN)


def test_subnetwork(float64):
    model = Residual()
    indices = torch.LongTensor([0, 5, 100, 200, 218])
    la = Laplace(
        model,
        "classification",
        subset_of_weights="subnetwork",
        hessian_structure="diag",
        subnetwork_indices=indices,
        backend=HesScaleGGN,
    )
    la.fit(loader("classification"))
    diagonal = hesscale.diagonal(
        model, loader("classification"), nn.CrossEntropyLoss(reduction="sum"), progress=False
    )
    torch.testing.assert_close(la.H, torch.cat([d.flatten() for d in diagonal.values()])[indices])
    probs = la(
        loader("classification").dataset.tensors[0][:4],
        pred_type="nn",
        link_approx="mc",
        n_samples=10,
    )
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_float32_agrees_with_the_exact_backend():
    ours = fitted_H(last_linear_only(), "classification", HesScaleGGN)
    theirs = fitted_H(last_linear_only(), "classification", CurvlinopsGGN)
    torch.testing.assert_close(ours.H, theirs.H, rtol=1e-6, atol=0)  # measured: 1.7e-7


def test_other_structures_are_refused_clearly():
    la = Laplace(
        Residual(),
        "classification",
        subset_of_weights="all",
        hessian_structure="kron",
        backend=HesScaleGGN,
    )
    with pytest.raises(ValueError, match="hessian_structure='diag' only"):
        la.fit(loader("classification"))
    with pytest.raises(ValueError, match="stochastic=True"):
        fitted_H(Residual(), "classification", HesScaleGGN, backend_kwargs={"stochastic": True})
