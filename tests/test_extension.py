"""HesScale / HesScaleGN through BackPACK on whole networks, against the brute-force recursion."""

import pytest
import torch
import torch.nn.functional as F
from backpack import backpack, extend
from backpack.extensions import DiagGGNExact, DiagHessian
from torch import Tensor, nn

from hesscale import HesScale, HesScaleGN
from tests.oracle import assert_close, definition_diag, exact_loss_diag, hesscale_by_definition

pytestmark = pytest.mark.usefixtures("float64")


def run_extensions(layers, loss_fn, x, y, *extensions):
    model, loss_module = extend(nn.Sequential(*layers)), extend(loss_fn)
    model.zero_grad()  # a fresh pass: diagonals accumulate with the gradients otherwise
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
    in_loss = isinstance(layers[-1], nn.LogSoftmax) and isinstance(loss_fn, nn.NLLLoss)
    for field, gauss_newton in [("hesscale", False), ("hesscale_gn", True)]:
        expected = hesscale_by_definition(
            layers, lambda o: loss_fn(o, y), x, gauss_newton, last_layer_in_loss=in_loss
        )
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


def test_diagonals_accumulate_like_gradients_and_like_the_engine():
    """Two backward passes add up (as p.grad does, and as hesscale.backward does); after
    zero_grad() the next pass starts afresh."""
    import copy

    import torch.nn.functional as F

    import hesscale

    torch.manual_seed(11)
    x, y = torch.randn(6, 4), classes(6, 3)
    plain = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    model, loss_fn = extend(copy.deepcopy(plain)), extend(nn.CrossEntropyLoss())
    for half in (slice(0, 3), slice(3, 6)):
        hesscale.backward(F.cross_entropy(plain(x[half]), y[half]))
        with backpack(HesScale()):
            loss_fn(model(x[half]), y[half]).backward()
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        assert_close(p.grad, q.grad)
        assert_close(p.hesscale, q.hesscale)
    first = [p.hesscale.clone() for p in model.parameters()]
    model.zero_grad()
    with backpack(HesScale()):
        loss_fn(model(x[3:]), y[3:]).backward()
    plain.zero_grad()
    hesscale.backward(F.cross_entropy(plain(x[3:]), y[3:]))
    for p, q, total in zip(model.parameters(), plain.parameters(), first, strict=True):
        assert_close(p.hesscale, q.hesscale)
        assert not torch.allclose(p.hesscale, total)


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
    """Training steps (zero_grad, then backward) each start afresh."""
    torch.set_default_dtype(torch.float32)
    model = extend(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    loss_fn = extend(nn.CrossEntropyLoss())
    x, y = torch.randn(5, 3), classes(5, 2)
    results = []
    for _ in range(2):
        model.zero_grad()
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


# --- issue 9 regressions ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using a target size:UserWarning")
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("shapes", [((2, 1), (2,)), ((3, 1), (3, 4)), ((3, 2), (4, 3, 2))])
def test_mse_with_broadcasting_target_is_exact_for_the_last_layer(reduction, shapes):
    """Issue 9's reproducer: Linear(1, 1), x = ones(2, 1), y = zeros(2), reduction='sum' gave
    weight.hesscale == 4; the exact Hessian diagonal is 8."""
    torch.manual_seed(10)
    (n, features), target_shape = shapes
    layer, loss_fn = nn.Linear(1, features), nn.MSELoss(reduction=reduction)
    x = torch.ones(n, 1) if shapes[0] == (2, 1) else torch.randn(n, 1)
    y = torch.zeros(target_shape) if shapes[0] == (2, 1) else torch.randn(target_shape)
    model = run_extensions([layer], loss_fn, x, y)
    exact = last_layer_exact(model, loss_fn, x, y)
    for name, p in model[-1].named_parameters():
        assert_close(p.hesscale, exact[name])
        assert_close(p.hesscale_gn, exact[name])
    if shapes[0] == (2, 1) and reduction == "sum":
        assert model[0].weight.hesscale.item() == 8.0


def random_chain(seed: int, kind: str) -> tuple[list[nn.Module], nn.Module, Tensor, Tensor]:
    """A random MLP of supported modules (including Softmax and LogSoftmax inside) and a loss."""
    generator = torch.Generator().manual_seed(seed)
    pick = lambda n: int(torch.randint(n, (1,), generator=generator))  # noqa: E731
    inner = [nn.Tanh, nn.Sigmoid, nn.ReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Softplus, nn.LogSigmoid]
    inner += [lambda: nn.Softmax(dim=1), lambda: nn.LogSoftmax(dim=1)]
    torch.manual_seed(seed)
    width, layers = 4, []
    for _ in range(1 + pick(3)):
        out = 3 + pick(4)
        layers += [nn.Linear(width, out), inner[pick(len(inner))]()]
        width = out
    classes_ = 3
    layers.append(nn.Linear(width, classes_))
    n = 1 + pick(6)
    x = 3 * torch.randn(n, 4)
    if kind == "ce":
        return layers, nn.CrossEntropyLoss(), x, classes(n, classes_)
    if kind == "mse":
        return layers, nn.MSELoss(reduction="sum"), x, torch.randn(n, classes_)
    if kind == "bce":
        return layers, nn.BCEWithLogitsLoss(pos_weight=torch.rand(classes_)), x, torch.rand(n, 3)
    return layers + [nn.LogSoftmax(dim=1)], nn.NLLLoss(), x, classes(n, classes_)


@pytest.mark.parametrize("kind", ["ce", "mse", "bce", "logsoftmax-nll"])
def test_gauss_newton_diagonal_is_never_negative(kind):
    """A Gauss-Newton diagonal of a convex loss is >= 0, also with Softmax / LogSoftmax inside
    the network (issue 9: Linear -> LogSoftmax -> Linear -> CE gave about -0.007)."""
    for seed in range(40):
        layers, loss_fn, x, y = random_chain(seed, kind)
        model = run_extensions(layers, loss_fn, x, y, HesScaleGN())
        for p in model.parameters():
            assert p.hesscale_gn.min() >= 0, (seed, model)


def test_gauss_newton_with_log_softmax_inside_the_network_reproducer():
    negative = 0
    for draw in range(50):
        torch.manual_seed(6 + draw)
        layers = [nn.Linear(4, 5), nn.LogSoftmax(dim=1), nn.Linear(5, 3)]
        x, y = torch.randn(6, 4), classes(6, 3)
        model = run_extensions(layers, nn.CrossEntropyLoss(), x, y, HesScaleGN())
        expected = hesscale_by_definition(layers, lambda o, y=y: F.cross_entropy(o, y), x, True)
        for p in model.parameters():
            assert_close(p.hesscale_gn, expected[id(p)])
            negative += bool(p.hesscale_gn.min() < 0)
    assert negative == 0


class LogSoftmaxTwoWays(nn.Module):
    """One LogSoftmax output feeding NLLLoss directly and a Linear head (scored by MSE)."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(3, 4), nn.Linear(4, 2)
        self.log_softmax = nn.LogSoftmax(dim=1)

    def forward(self, x):
        log_probs = self.log_softmax(self.body(x))
        return log_probs, self.head(log_probs)


def test_log_softmax_keeps_only_nll_part_of_its_curvature_in_gauss_newton():
    torch.manual_seed(11)
    model = extend(LogSoftmaxTwoWays())
    nll, mse = extend(nn.NLLLoss()), extend(nn.MSELoss())
    x, y, t = torch.randn(5, 3), classes(5, 4), torch.randn(5, 2)
    log_probs, out = model(x)
    with backpack(HesScale(), HesScaleGN()):
        (nll(log_probs, y) + mse(out, t)).backward()

    # brute force: D at the LogSoftmax output from the head only (NLL is linear); the
    # LogSoftmax curvature weighted by NLL's gradient (GN) or by the whole gradient (HesScale)
    z = model.body(x).detach()
    lp = torch.log_softmax(z, 1).requires_grad_(True)
    h_head = exact_loss_diag(lambda o: mse(o, t), model.head(lp).detach())
    h_lp = definition_diag(model.head, lp, h_head, None)
    g_nll = torch.autograd.grad(F.nll_loss(lp, y), lp)[0]
    g_all = torch.autograd.grad(F.nll_loss(lp, y) + mse(model.head(lp), t), lp)[0]
    log_softmax = lambda u: torch.log_softmax(u, 1)  # noqa: E731
    w = model.body.weight
    linear = lambda q: x @ q.T + model.body.bias  # noqa: E731
    for field, g in [("hesscale_gn", g_nll), ("hesscale", g_all)]:
        h_z = definition_diag(log_softmax, z, h_lp, g)
        assert_close(getattr(w, field), definition_diag(linear, w, h_z, None))


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.BCEWithLogitsLoss()])
def test_empty_batch_gives_zero_diagonals_like_the_gradients(loss_fn):
    """Issue 9: 'mean' over 0 samples raised ZeroDivisionError. Torch: NaN loss, zero grads."""
    model = extend(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    loss = extend(loss_fn)(model(torch.randn(0, 3)), torch.rand(0, 2))
    with backpack(HesScale(), HesScaleGN()):
        loss.backward()
    assert loss.isnan()
    for p in model.parameters():
        assert torch.equal(p.grad, torch.zeros_like(p))
        assert torch.equal(p.hesscale, torch.zeros_like(p))
        assert torch.equal(p.hesscale_gn, torch.zeros_like(p))


def test_meta_device_model_gives_meta_diagonals():
    """Issue 9: 'Tensor.item() cannot be called on meta tensors' from the loss check."""
    model = extend(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to("meta"))
    loss_fn = extend(nn.CrossEntropyLoss())
    x, y = torch.randn(5, 3, device="meta"), torch.zeros(5, dtype=torch.long, device="meta")
    with backpack(HesScale(), HesScaleGN()):
        loss_fn(model(x), y).backward()
    for p in model.parameters():
        assert p.hesscale.device.type == "meta" and p.hesscale.shape == p.shape
        assert p.hesscale_gn.device.type == "meta"


class ReshapeInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act, self.linear = nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        h = self.act(self.conv(x))
        return self.linear(h.reshape(h.shape[0], -1))  # copies when h is channels_last


def test_reshape_that_copies_a_channels_last_output_between_modules():
    """Issue 9: the copy made the error blame torch.relu or x + y; now it is followed."""
    torch.manual_seed(12)
    x, y = torch.randn(3, 2, 6, 6), classes(3, 2)
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(13)
        model = extend(ReshapeInForward())
        loss = extend(nn.CrossEntropyLoss())(model(x.contiguous(memory_format=memory_format)), y)
        with backpack(HesScale(), HesScaleGN()):
            loss.backward()
        results.append([(p.hesscale.clone(), p.hesscale_gn.clone()) for p in model.parameters()])
    torch.manual_seed(13)
    layers = ReshapeInForward()
    expected = hesscale_by_definition(
        [layers.conv, layers.act, nn.Flatten(), layers.linear],
        lambda o: F.cross_entropy(o, y),
        x,
        gauss_newton=False,
    )
    for (h, h_gn), (h_cl, h_gn_cl), p in zip(*results, layers.parameters(), strict=True):
        assert_close(h, expected[id(p)])
        assert_close(h_cl, h)
        assert_close(h_gn_cl, h_gn)


def test_last_layer_over_extra_dims_scored_over_another_dim_follows_the_definition():
    """README's condition for exactness: a Linear over extra dims scored by a loss over another
    dim (here CE over dim 1) couples outputs that share a weight, so the last layer is not exact
    there; HesScale is still what its definition gives."""
    torch.manual_seed(0)  # issue 9's example, drawn in float32
    layer = nn.Linear(4, 3, dtype=torch.float32).double()
    x, y = torch.randn(2, 5, 4, dtype=torch.float32).double(), torch.randint(0, 5, (2, 3))
    loss_fn = nn.CrossEntropyLoss()
    model = run_extensions([layer], loss_fn, x, y)
    exact = last_layer_exact(model, loss_fn, x, y)["weight"]
    recursion = hesscale_by_definition([layer], lambda o: loss_fn(o, y), x, gauss_newton=False)
    assert_close(layer.weight.hesscale, recursion[id(layer.weight)])
    torch.testing.assert_close(layer.weight.hesscale[0, 0].item(), 0.0894, rtol=0, atol=5e-5)
    torch.testing.assert_close(exact[0, 0].item(), 0.0954, rtol=0, atol=5e-5)


def test_gradient_accumulation_sums_the_passes_like_the_gradient():
    """As with hesscale.backward: without zero_grad() between them, passes add up."""
    torch.manual_seed(14)
    model = extend(nn.Sequential(nn.Linear(3, 2)))
    loss_fn = extend(nn.CrossEntropyLoss())
    batches = [(torch.randn(4, 3), classes(4, 2)) for _ in range(2)]
    separate = []
    for x, y in batches:
        model.zero_grad()
        with backpack(HesScale()):
            loss_fn(model(x), y).backward()
        separate.append(model[0].weight.hesscale.clone())
    model.zero_grad()
    for x, y in batches:  # accumulate: p.grad and p.hesscale sum both passes
        with backpack(HesScale()):
            loss_fn(model(x), y).backward()
    assert (separate[0] - separate[1]).abs().max() > 1e-3
    assert_close(model[0].weight.hesscale, separate[0] + separate[1])


def test_gaussian_nll_with_a_number_as_variance():
    torch.manual_seed(15)
    layer, loss_fn = nn.Linear(3, 2), nn.GaussianNLLLoss(reduction="sum")
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    model, loss_module = extend(nn.Sequential(layer)), extend(loss_fn)
    with backpack(HesScale()):
        loss_module(model(x), y, 0.5).backward()
    exact = last_layer_exact(model, lambda out, target: loss_fn(out, target, 0.5), x, y)
    for name, p in layer.named_parameters():
        assert_close(p.hesscale, exact[name])
