"""Whole graphs through hesscale.backward against the graph oracle (the definition evaluated
operation by operation by brute force, independently of the engine)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.engine_checks import check_graph

pytestmark = pytest.mark.usefixtures("float64")


def r(*shape):
    return torch.randn(*shape)


def mlp_params(*widths):
    params = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        params[f"w{i}"] = r(b, a) / a**0.5
        params[f"b{i}"] = r(b) * 0.1
    return params


def mlp(p, x, activation=torch.tanh):
    n = len(p) // 2
    for i in range(n):
        x = F.linear(x, p[f"w{i}"], p[f"b{i}"])
        if i < n - 1:
            x = activation(x)
    return x


def ce(p, x, y):
    out = mlp(p, x)
    return F.cross_entropy(out, y), (out,)


def residual(p, x, y):
    """x + f(x) blocks, a functional op between layers, a reused weight."""
    h = torch.tanh(F.linear(x, p["w0"], p["b0"]))
    h = h + torch.sigmoid(F.linear(h, p["w1"], p["b1"]))
    h = h * torch.relu(F.linear(h, p["w1"]))  # p["w1"] used twice
    out = F.linear(h, p["w2"], p["b2"])
    return F.cross_entropy(out, y, label_smoothing=0.1), (out,)


def probability_targets(p, x, y):
    out = mlp(p, x, F.gelu)
    return F.cross_entropy(out, torch.softmax(y, 1)), (out,)


def mse_tanh_head(p, x, y):
    out = torch.tanh(mlp(p, x, F.silu))
    return F.mse_loss(out, y, reduction="sum"), (out,)


def two_losses(p, x, y):
    """Two heads on one trunk, a weighted sum of losses, a weight penalty."""
    trunk = torch.tanh(F.linear(x, p["w0"], p["b0"]))
    logits = F.linear(trunk, p["w1"], p["b1"])
    value = F.linear(trunk, p["w2"]).squeeze(-1)
    loss = F.cross_entropy(logits, y) + 0.5 * F.mse_loss(value, y.double())
    return loss + 1e-2 * p["w0"].pow(2).sum(), (logits, value)


def gaussian_nll(mean, target, var, eps=1e-6):
    """F.gaussian_nll_loss's formula, without its data-dependent check (which make_fx cannot
    trace): var is clamped without gradient, as torch does."""
    var = var.clone()
    with torch.no_grad():
        var.clamp_(min=eps)
    return (0.5 * (torch.log(var) + (mean - target) ** 2 / var)).mean()


def gaussian(p, x, y, nll=gaussian_nll):
    """A mean head and a log-variance head scored by the Gaussian NLL."""
    trunk = torch.tanh(F.linear(x, p["w0"], p["b0"]))
    mean, log_var = F.linear(trunk, p["w1"], p["b1"]).chunk(2, dim=-1)
    return nll(mean, y, log_var.exp()), (mean, log_var)


def batched_linear(p, x, y):
    """nn.Linear over extra dimensions, a transpose, a mean over positions."""
    h = torch.tanh(F.linear(x, p["w0"], p["b0"]))  # (N, T, d)
    scores = h @ h.transpose(1, 2) / 2  # (N, T, T)
    out = F.linear(torch.softmax(scores, -1) @ h, p["w1"], p["b1"]).mean(1)
    return F.cross_entropy(out, y), (out,)


def in_place(p, x, y):
    """In-place activations and views, as models write them."""
    h = F.linear(x, p["w0"], p["b0"])
    h = F.elu(h, 0.5, inplace=True)
    h = F.leaky_relu(F.linear(h, p["w1"], p["b1"]), 0.2, inplace=True)
    h = h * torch.relu_(F.linear(h, p["w2"]))
    h += 1.0  # the product saved its inputs, not its output: this is allowed
    h.unsqueeze_(0).transpose_(0, 1)
    out = F.linear(h.squeeze(1), p["w3"], p["b3"])
    return F.cross_entropy(out, y), (out,)


def dtype_change(p, x, y):
    h = torch.tanh(F.linear(x, p["w0"], p["b0"])).float().double()
    out = F.linear(h, p["w1"], p["b1"])
    return F.cross_entropy(out, y, reduction="sum"), (out,)


def labels(n):
    return torch.randint(0, 3, (n,))


def noise(n):
    return r(n, 3)


GRAPHS = {
    "mlp-ce": (ce, lambda: mlp_params(4, 5, 3), (4,), labels),
    "residual": (residual, lambda: mlp_params(4, 4, 4, 3), (4,), labels),
    "probability-targets": (probability_targets, lambda: mlp_params(4, 5, 3), (4,), noise),
    "mse-tanh-head": (mse_tanh_head, lambda: mlp_params(3, 4, 2), (3,), lambda n: r(n, 2)),
    "in-place": (
        in_place,
        lambda: {
            "w0": r(4, 4), "b0": r(4), "w1": r(4, 4), "b1": r(4), "w2": r(4, 4),
            "w3": r(3, 4), "b3": r(3),
        },
        (4,), labels,
    ),
    "batched-linear": (
        batched_linear, lambda: {"w0": r(4, 3), "b0": r(4), "w1": r(3, 4), "b1": r(3)}, (5, 3),
        lambda n: torch.randint(0, 3, (n,)),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_matches_oracle(name, batch):
    torch.manual_seed(batch)
    loss_fn, params, x_shape, target = GRAPHS[name]
    check_graph(loss_fn, params(), r(batch, *x_shape), target(batch))


def test_two_losses_named_outputs():
    torch.manual_seed(0)
    params = {"w0": r(4, 3), "b0": r(4), "w1": r(3, 4), "b1": r(3), "w2": r(1, 4)}
    check_graph(two_losses, params, r(5, 3), torch.randint(0, 3, (5,)), name_output=True)


def test_gaussian_nll_named_outputs():
    torch.manual_seed(0)
    params = {"w0": r(4, 3), "b0": r(4), "w1": r(4, 4) / 2, "b1": r(4)}
    check_graph(gaussian, params, r(5, 3), r(5, 2), name_output=True)


def test_dtype_change_keeps_the_diagonal_wide():
    """Through a float32 round trip the gradient is rounded by autograd; the diagonal is not."""
    torch.manual_seed(0)
    check_graph(dtype_change, mlp_params(3, 4, 3), r(3, 3), torch.randint(0, 3, (3,)), rtol=1e-6)
