"""HesScale / HesScaleGN through BackPACK on whole networks, against the brute-force recursion."""

import pytest
import torch
from backpack import backpack, extend
from backpack.extensions import DiagGGNExact, DiagHessian
from torch import nn

from hesscale import HesScale, HesScaleGN
from tests.oracle import assert_close, definition_diag, exact_loss_diag, hesscale_by_definition

pytestmark = pytest.mark.usefixtures("float64")


def run_extensions(layers, loss_fn, x, y, *extensions):
    model, loss_module = extend(nn.Sequential(*layers)), extend(loss_fn)
    loss = loss_module(model(x), y)
    with backpack(*(extensions or (HesScale(), HesScaleGN()))):
        loss.backward()
    return model


def batchnorm_eval(num_features, cls=nn.BatchNorm1d):
    bn = cls(num_features)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    return bn.eval()


def classes(n, c):
    return torch.randint(0, c, (n,))


NETWORKS = {
    "tanh-sigmoid-ce": (
        lambda: [nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.Sigmoid(), nn.Linear(3, 3)],
        lambda: nn.CrossEntropyLoss(),
        (4,),
        lambda n: classes(n, 3),
    ),
    "relu-leaky-mse-sum": (
        lambda: [nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 2)],
        lambda: nn.MSELoss(reduction="sum"),
        (3,),
        lambda n: torch.randn(n, 2),
    ),
    "elu-selu-softplus-bce": (
        lambda: [
            nn.Linear(3, 4),
            nn.ELU(0.5),
            nn.Linear(4, 3),
            nn.SELU(),
            nn.Linear(3, 3),
            nn.Softplus(beta=2.0),
            nn.Linear(3, 2),
        ],
        lambda: nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 0.5])),
        (3,),
        lambda n: torch.rand(n, 2),
    ),
    "silu-gelu-logsigmoid-ce-smoothing": (
        lambda: [
            nn.Linear(3, 4),
            nn.SiLU(),
            nn.Linear(4, 4),
            nn.GELU(),
            nn.Linear(4, 3),
            nn.GELU(approximate="tanh"),
            nn.Linear(3, 3),
            nn.LogSigmoid(),
            nn.Linear(3, 4),
        ],
        lambda: nn.CrossEntropyLoss(label_smoothing=0.1, reduction="sum"),
        (3,),
        lambda n: classes(n, 4),
    ),
    "ce-probability-targets-weighted": (
        lambda: [nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)],
        lambda: nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.2),
        (3,),
        lambda n: torch.softmax(torch.randn(n, 3), 1),
    ),
    "ce-per-position-ignore-index": (
        lambda: [nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 3), nn.Unflatten(1, (3, 1))],
        lambda: nn.CrossEntropyLoss(ignore_index=1),
        (3,),
        lambda n: classes(n, 3).view(n, 1),
    ),
    "softmax-mse": (
        lambda: [nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2)],
        lambda: nn.MSELoss(),
        (3,),
        lambda n: torch.randn(n, 2),
    ),
    "logsoftmax-nll": (
        lambda: [nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3), nn.LogSoftmax(dim=1)],
        lambda: nn.NLLLoss(),
        (3,),
        lambda n: classes(n, 3),
    ),
    "batchnorm-dropout-eval-identity": (
        lambda: [
            nn.Linear(3, 4),
            batchnorm_eval(4),
            nn.Tanh(),
            nn.Dropout(0.5).eval(),
            nn.Identity(),
            nn.Linear(4, 3),
        ],
        lambda: nn.CrossEntropyLoss(),
        (3,),
        lambda n: classes(n, 3),
    ),
    "batchnorm2d-zeropad-flatten": (
        lambda: [
            batchnorm_eval(2, nn.BatchNorm2d),
            nn.ZeroPad2d((1, 0, 2, 1)),
            nn.Sigmoid(),
            nn.Flatten(),
            nn.Linear(2 * 5 * 4, 3),
        ],
        lambda: nn.CrossEntropyLoss(),
        (2, 2, 3),
        lambda n: classes(n, 3),
    ),
    "extra-leading-dims": (
        lambda: [nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)],
        lambda: nn.MSELoss(),
        (2, 3),
        lambda n: torch.randn(n, 2, 2),
    ),
}


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("batch", [1, 3])
def test_network_matches_recursion_by_definition(name, batch):
    torch.manual_seed(0)
    make_layers, make_loss, in_shape, make_target = NETWORKS[name]
    layers, loss_fn = make_layers(), make_loss()
    x, y = torch.randn(batch, *in_shape), make_target(batch)
    model = run_extensions(layers, loss_fn, x, y)
    for field, gauss_newton in [("hesscale", False), ("hesscale_gn", True)]:
        expected = hesscale_by_definition(layers, lambda o: loss_fn(o, y), x, gauss_newton)
        for p in model.parameters():
            assert getattr(p, field).shape == p.shape
            assert_close(getattr(p, field), expected[id(p)])


def last_layer_exact(model, loss_fn, x, y):
    last = model[-1]
    body = model[:-1]
    features = body(x).detach()
    out = {}
    for name, p in last.named_parameters():

        def loss_of(q, name=name):
            params = {n: (q if n == name else v) for n, v in last.named_parameters()}
            return loss_fn(torch.func.functional_call(last, params, (features,)), y)

        out[name] = exact_loss_diag(loss_of, p)
    return out


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU, nn.Sigmoid])
@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), nn.MSELoss(reduction="sum")])
def test_last_layer_equals_exact_hessian_diagonal(activation, loss_fn):
    torch.manual_seed(4)
    layers = [nn.Linear(4, 6), activation(), nn.Linear(6, 3)]
    x = torch.randn(5, 4)
    y = classes(5, 3) if isinstance(loss_fn, nn.CrossEntropyLoss) else torch.randn(5, 3)
    model = run_extensions(layers, loss_fn, x, y, HesScale(), HesScaleGN(), DiagHessian())
    exact = last_layer_exact(model, loss_fn, x, y)
    for name, p in model[-1].named_parameters():
        assert_close(p.diag_h, exact[name])  # BackPACK's exact diagonal agrees with autograd
        assert_close(p.hesscale, exact[name])
        assert_close(p.hesscale_gn, exact[name])


def test_relu_networks_give_hesscale_equal_to_hesscale_gn():
    torch.manual_seed(5)
    layers = [nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)]
    model = run_extensions(layers, nn.CrossEntropyLoss(), torch.randn(6, 4), classes(6, 3))
    for p in model.parameters():
        assert p.hesscale.abs().sum() > 0
        assert_close(p.hesscale, p.hesscale_gn)


def test_tanh_networks_differ_between_variants():
    torch.manual_seed(5)
    layers = [nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)]
    model = run_extensions(layers, nn.CrossEntropyLoss(), torch.randn(6, 4), classes(6, 3))
    assert (model[0].weight.hesscale - model[0].weight.hesscale_gn).abs().max() > 1e-6


@pytest.mark.parametrize("extension", [HesScale, HesScaleGN])
def test_logsoftmax_nll_equals_cross_entropy_on_logits(extension):
    torch.manual_seed(6)
    x, y = torch.randn(4, 3), classes(4, 3)
    body = [nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)]
    field = "hesscale" if extension is HesScale else "hesscale_gn"
    with_ce = run_extensions(body, nn.CrossEntropyLoss(), x, y, extension())
    results_ce = [getattr(p, field).clone() for p in with_ce.parameters()]
    with_nll = run_extensions(body + [nn.LogSoftmax(dim=1)], nn.NLLLoss(), x, y, extension())
    for p, expected in zip(with_nll.parameters(), results_ce, strict=True):
        assert_close(getattr(p, field), expected)


def test_results_do_not_depend_on_other_extensions_alongside():
    torch.manual_seed(7)

    def layers():
        torch.manual_seed(8)
        return [nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2)]

    x, y = torch.randn(3, 3), classes(3, 2)
    alone = run_extensions(layers(), nn.CrossEntropyLoss(), x, y, HesScale())
    together = run_extensions(
        layers(), nn.CrossEntropyLoss(), x, y, DiagGGNExact(), HesScale(), DiagHessian()
    )
    reference = run_extensions(layers(), nn.CrossEntropyLoss(), x, y, DiagHessian())
    params = zip(alone.parameters(), together.parameters(), reference.parameters(), strict=True)
    for a, b, r in params:
        assert_close(a.hesscale, b.hesscale)
        assert_close(b.diag_h, r.diag_h)


def test_float32_results_keep_dtype_and_repeated_steps_do_not_accumulate():
    torch.set_default_dtype(torch.float32)
    model = extend(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    loss_fn = extend(nn.CrossEntropyLoss())
    x, y = torch.randn(5, 3), classes(5, 2)
    results = []
    for _ in range(2):
        with backpack(HesScale()):
            loss_fn(model(x), y).backward()
        results.append([p.hesscale.clone() for p in model.parameters()])
    for p, first, second in zip(model.parameters(), *results, strict=True):
        assert p.hesscale.dtype == torch.float32
        torch.testing.assert_close(first, second)


def test_gaussian_nll_with_mean_and_variance_heads():
    torch.manual_seed(9)
    trunk, mean_head = nn.Linear(3, 4), nn.Linear(4, 2)
    act, var_linear, var_act = nn.Tanh(), nn.Linear(4, 2), nn.Softplus()
    modules = [extend(m) for m in (trunk, act, mean_head, var_linear, var_act)]
    loss_fn = extend(nn.GaussianNLLLoss())
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    features = act(trunk(x))
    loss = loss_fn(mean_head(features), y, var_act(var_linear(features)))
    with backpack(HesScale()):
        loss.backward()

    # brute force: exact diagonals at both heads, then the definition back to the trunk
    f = act(trunk(x)).detach()
    mu, pre_var = mean_head(f).detach(), var_linear(f).detach()
    var = var_act(pre_var).detach()
    h_mu = exact_loss_diag(lambda m: loss_fn(m, y, var), mu)
    h_var = exact_loss_diag(lambda v: loss_fn(mu, y, v), var)
    g_var = torch.autograd.grad(loss_fn(mu, y, var.requires_grad_()), var)[0]
    h_pre_var = definition_diag(var_act, pre_var, h_var, g_var)
    for head, h_out in [(mean_head, h_mu), (var_linear, h_pre_var)]:
        w = head.weight
        expected = definition_diag(lambda q, head=head: f @ q.T + head.bias, w, h_out, None)
        assert_close(w.hesscale, expected)
    h_f = definition_diag(mean_head, f, h_mu, None)
    h_f = h_f + definition_diag(var_linear, f, h_pre_var, None)
    g_f = torch.autograd.grad(loss_fn(mean_head(f.requires_grad_()), y, var_act(var_linear(f))), f)[
        0
    ]
    pre = trunk(x).detach()
    h_pre = definition_diag(act, pre, h_f, g_f)
    expected = definition_diag(lambda q: x @ q.T + trunk.bias, trunk.weight, h_pre, None)
    assert_close(trunk.weight.hesscale, expected)
    assert all(hasattr(m.weight, "hesscale") for m in modules if hasattr(m, "weight"))
