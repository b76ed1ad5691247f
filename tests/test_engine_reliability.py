"""hesscale.backward against the problems issue 9 found in the BackPACK adaptor: each has a
regression test here (broadcasting MSE targets, empty batches, the meta device, HesScaleGN's
sign, channels_last reshapes, inputs=, a second pass over a retained graph)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hesscale
from tests.engine_checks import check_graph
from tests.oracle import assert_close, exact_loss_diag


def parameters_hessian_diagonal(model: nn.Module, loss_of) -> dict[str, torch.Tensor]:
    """The exact Hessian diagonal of ``loss_of(model)`` for every parameter of a one-layer
    model (where HesScale is exact)."""
    result = {}
    for name, p in model.named_parameters():

        def of(q, name=name):
            params = dict(model.named_parameters()) | {name: q}
            return loss_of(lambda x: torch.func.functional_call(model, params, (x,)))

        result[name] = exact_loss_diag(of, p)
    return result


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize(
    "x_shape, y_shape", [((2, 1), (2,)), ((4, 1), (4, 3)), ((3, 2), (2,)), ((3, 1), (1, 3, 2))]
)
def test_mse_with_a_broadcasting_target_is_the_exact_hessian(reduction, x_shape, y_shape):
    """Issue 9: Linear(1, 1), x = ones(2, 1), y = zeros(2), 'sum' must give 8 (the prediction's
    entries are each compared with every target entry they broadcast against)."""
    torch.manual_seed(0)
    model = nn.Linear(x_shape[-1], 1)
    x, y = torch.randn(*x_shape), torch.randn(*y_shape)
    if x_shape == (2, 1):
        x, y = torch.ones(2, 1), torch.zeros(2)

    def loss_of(forward):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the broadcast
            return F.mse_loss(forward(x), y, reduction=reduction)

    hesscale.backward(loss_of(model), gn="both")
    exact = parameters_hessian_diagonal(model, loss_of)
    for name, p in model.named_parameters():
        assert_close(p.hesscale, exact[name])
        assert_close(p.hesscale_gn, exact[name])
    if x_shape == (2, 1) and reduction == "sum":
        assert model.weight.hesscale.item() == 8.0


EMPTY_LOSSES = {
    "mse": lambda o: F.mse_loss(o, torch.zeros(0, 3)),
    "bce-with-logits": lambda o: F.binary_cross_entropy_with_logits(o, torch.zeros(0, 3)),
    "bce": lambda o: F.binary_cross_entropy(torch.sigmoid(o), torch.zeros(0, 3)),
    "cross-entropy": lambda o: F.cross_entropy(o, torch.zeros(0, dtype=torch.long)),
    "cross-entropy-probabilities": lambda o: F.cross_entropy(o, torch.zeros(0, 3)),
    "nll": lambda o: F.nll_loss(F.log_softmax(o, 1), torch.zeros(0, dtype=torch.long)),
    "huber": lambda o: F.huber_loss(o, torch.zeros(0, 3)),
    "smooth-l1": lambda o: F.smooth_l1_loss(o, torch.zeros(0, 3)),
    "l1": lambda o: F.l1_loss(o, torch.zeros(0, 3)),
}


@pytest.mark.parametrize("loss", EMPTY_LOSSES)
def test_an_empty_batch_gives_zero_diagonals_like_the_gradients(loss):
    """Torch's 'mean' over 0 samples is NaN, with zero gradients; the diagonals are sums over
    no samples: zero, like the gradients (documented here), and nothing raises."""
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    value = EMPTY_LOSSES[loss](model(torch.zeros(0, 4)))
    assert value.isnan()
    hesscale.backward(value, gn="both")
    for p in model.parameters():
        assert torch.equal(p.grad, torch.zeros_like(p))
        assert torch.equal(p.hesscale, torch.zeros_like(p))
        assert torch.equal(p.hesscale_gn, torch.zeros_like(p))


def written(out):
    """In-place writes into views, through each of CopySlices' paths."""
    out = out * 1
    out[:, 0] = out[:, 1].detach()  # a copy
    out[:, 1:] *= 2  # entrywise
    out[1:, 1].exp_()  # restricted to the view through its recorded chain
    return out


@pytest.mark.parametrize("loss", ["cross-entropy", "mse", "bce-with-logits", "writes-into-views"])
def test_a_model_on_the_meta_device_runs_without_reading_values(loss):
    """Meta tensors have no values: any host read (.item(), bool(tensor)) in the engine or a
    rule would raise here, so this also guards against GPU syncs."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.LogSoftmax(1), nn.Linear(4, 2))
    model = model.to("meta")
    x = torch.randn(5, 3, device="meta")
    labels = torch.zeros(5, dtype=torch.long, device="meta")
    out = model(x)
    losses = {
        "cross-entropy": lambda: F.cross_entropy(out, labels),
        "mse": lambda: F.mse_loss(out, torch.zeros(5, 2, device="meta")),
        "bce-with-logits": lambda: F.binary_cross_entropy_with_logits(
            out, torch.zeros(5, 2, device="meta")
        ),
        "writes-into-views": lambda: F.nll_loss(
F.log_softmax(written(out), 1), labels),
    }  # fmt: skip
    hesscale.backward(losses[loss](), gn="both")
    for p in model.parameters():
        assert p.hesscale.device.type == "meta" and p.hesscale.shape == p.shape


ACTIVATIONS = [nn.Tanh, nn.Sigmoid, nn.ReLU, nn.GELU, nn.ELU, nn.Softplus]
MIDDLE = [lambda: nn.LogSoftmax(1), lambda: nn.Softmax(1)]
CONVEX_LOSSES = {
    "cross-entropy": lambda o, y: F.cross_entropy(o, y % o.shape[1]),
    "mse": lambda o, y: F.mse_loss(o, torch.randn_like(o)),
    "bce-with-logits": lambda o, y: F.binary_cross_entropy_with_logits(o, torch.rand_like(o)),
    "log-softmax-nll": lambda o, y: F.nll_loss(F.log_softmax(o, 1), y % o.shape[1]),
}


def random_network(generator: torch.Generator) -> nn.Sequential:
    """A random MLP with a (log-)softmax somewhere in the middle."""
    depth = int(torch.randint(2, 5, (), generator=generator))
    widths = torch.randint(2, 7, (depth + 1,), generator=generator).tolist()
    layers: list[nn.Module] = []
    middle = int(torch.randint(0, depth - 1, (), generator=generator))
    for i in range(depth):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < depth - 1:
            pick = int(torch.randint(0, len(ACTIVATIONS), (), generator=generator))
            layers.append(ACTIVATIONS[pick]())
            if i == middle:
                layers.append(MIDDLE[int(torch.randint(0, 2, (), generator=generator))]())
    return nn.Sequential(*layers)


@pytest.mark.parametrize("loss", CONVEX_LOSSES)
def test_hesscale_gn_is_never_negative_for_convex_losses(loss):
    """Issue 9: a Gauss-Newton diagonal is a sum of squares times the loss's (non-negative)
    curvature. Random networks with a log-softmax or softmax in the middle, large inputs in
    float32 (where the cancellation in the softmax rules used to make it negative)."""
    for seed in range(25):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = random_network(generator)
        x = 30 * torch.randn(6, model[0].in_features)
        y = torch.randint(0, 100, (6,))
        hesscale.backward(CONVEX_LOSSES[loss](model(x), y), gn=True)
        for p in model.parameters():
            assert (p.hesscale_gn >= 0).all(), (seed, model)


@pytest.mark.usefixtures("float64")
def test_hesscale_gn_of_issue_9s_log_softmax_network_is_non_negative_and_exact():
    """Issue 9's reproducer (Linear -> LogSoftmax -> Linear -> cross-entropy) against the
    oracle: the middle log-softmax belongs to the network, so HesScaleGN drops its curvature."""
    torch.manual_seed(6)
    params = {"w0": torch.randn(5, 4), "b0": torch.randn(5), "w1": torch.randn(3, 5),
              "b1": torch.randn(3)}  # fmt: skip

    def loss_fn(p, x, y):
        out = F.linear(F.log_softmax(F.linear(x, p["w0"], p["b0"]), 1), p["w1"], p["b1"])
        return F.cross_entropy(out, y), (out,)

    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    check_graph(loss_fn, params, x, y)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    hesscale.backward(loss_fn(leaves, x, y)[0], gn=True)
    assert all((p.hesscale_gn >= 0).all() for p in leaves.values())


@pytest.mark.usefixtures("float64")
def test_channels_last_input_with_a_reshape_matches_the_oracle():
    """Issue 9: reshape(N, -1) of a channels_last tensor copies (autograd records a clone
    and an unsafe view); the engine follows the graph, whatever the memory format."""
    torch.manual_seed(0)
    params = {"scale": torch.randn(1, 3, 1, 1), "w": torch.randn(2, 3 * 2 * 2) / 3,
              "b": torch.randn(2)}  # fmt: skip

    def loss_fn(p, x, y):
        h = torch.tanh(x * p["scale"])  # keeps the channels_last layout
        out = F.linear(h.reshape(h.shape[0], -1), p["w"], p["b"])
        return F.cross_entropy(out, y), (out,)

    x = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    h = torch.tanh(x * params["scale"].requires_grad_(True))
    assert h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous()
    names = set()
    node = h.reshape(4, -1).grad_fn
    while node is not None and node.name() != "TanhBackward0":
        names.add(node.name())
        node = node.next_functions[0][0]
    assert "CloneBackward0" in names  # the reshape copied
    check_graph(loss_fn, {k: v.detach() for k, v in params.items()}, x, torch.tensor([0, 1, 1, 0]))


@pytest.mark.parametrize("gn", [False, True, "both"])
def test_inputs_gives_diagonals_for_those_leaves_only(gn):
    """Issue 9: backward(inputs=...) is supported: the named leaves get what a full pass gives
    them, the others get neither a gradient nor a diagonal."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    variants = {False: ["hesscale"], True: ["hesscale_gn"], "both": ["hesscale", "hesscale_gn"]}
    hesscale.backward(F.cross_entropy(model(x), y), gn=gn)
    expected = {v: getattr(model[2].weight, v).clone() for v in variants[gn]}
    for p in model.parameters():
        p.grad = None
        for v in variants[gn]:
            delattr(p, v)
    hesscale.backward(F.cross_entropy(model(x), y), gn=gn, inputs=[model[2].weight])
    for v in variants[gn]:
        torch.testing.assert_close(getattr(model[2].weight, v), expected[v], rtol=0, atol=0)
        assert not hasattr(model[0].weight, v) and not hasattr(model[2].bias, v)
    assert model[0].weight.grad is None and model[2].bias.grad is None


def test_a_second_pass_over_a_retained_graph():
    """Issue 9: a second backward after retain_graph=True works; like p.grad, the diagonals
    accumulate over the two passes (gradient accumulation), and after zero_grad a pass over
    the same retained graph starts afresh."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    loss = F.cross_entropy(model(x), y)
    hesscale.backward(loss, gn="both", retain_graph=True)
    first = [
        (p.grad.clone(), p.hesscale.clone(), p.hesscale_gn.clone()) for p in model.parameters()
    ]
    hesscale.backward(loss, gn="both", retain_graph=True)
    for p, (grad, h, h_gn) in zip(model.parameters(), first, strict=True):
        torch.testing.assert_close(p.grad, 2 * grad)
        torch.testing.assert_close(p.hesscale, 2 * h)
        torch.testing.assert_close(p.hesscale_gn, 2 * h_gn)
    model.zero_grad()
    hesscale.backward(loss, gn="both")
    for p, (grad, h, h_gn) in zip(model.parameters(), first, strict=True):
        torch.testing.assert_close(p.grad, grad, rtol=0, atol=0)
        torch.testing.assert_close(p.hesscale, h, rtol=0, atol=0)
        torch.testing.assert_close(p.hesscale_gn, h_gn, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="second time"):
        hesscale.backward(loss)  # the graph was freed, as for loss.backward()


# float16 ---------------------------------------------------------------------------------


def test_float16_squares_do_not_overflow_where_the_diagonal_fits():
    """Issue 9: nn.Linear(3, 2).half() on inputs of 300: x^2 = 90000 overflows float16, the
    diagonal (~2.2e4 here) does not. The rules square and sum in float32 (rules.precision) and
    cast the finished diagonal to float16: it equals the float32 model's, cast (up to the
    float16 rounding of the forward pass itself)."""
    torch.manual_seed(0)
    model16 = nn.Linear(3, 2).half()
    with torch.no_grad():
        model16.weight.mul_(1e-3)  # logits of order 1: the softmax is not saturated
    model32 = nn.Linear(3, 2)
    model32.load_state_dict({k: v.float() for k, v in model16.state_dict().items()})
    x, y = torch.full((4, 3), 300.0), torch.tensor([0, 1, 0, 1])
    assert (x.half() ** 2).isinf().all()
    hesscale.backward(F.cross_entropy(model16(x.half()), y), gn="both")
    hesscale.backward(F.cross_entropy(model32(x), y), gn="both")
    for p16, p32 in zip(model16.parameters(), model32.parameters(), strict=True):
        for variant in ("hesscale", "hesscale_gn"):
            h16, h32 = getattr(p16, variant), getattr(p32, variant)
            assert h16.dtype == torch.float16 and h16.isfinite().all()
            torch.testing.assert_close(h16.float(), h32.half().float(), rtol=2e-3, atol=0)
    assert model16.weight.hesscale.min() > 2e4


FLOAT16_GRAPHS = ["views", "index-writes", "constant-buffers", "whole-tensor-writes"]


@pytest.mark.parametrize("name", FLOAT16_GRAPHS)
def test_float16_graphs_follow_the_float64_result(name):
    """Writes, index and loss kernels whose backward formulas need the node's own dtype run
    with float32 diagonals through a float16 model; the result follows float64's to the
    precision of a float16 forward pass."""
    from tests import test_engine_ops_inplace as graphs

    loss_fn, names = graphs.GRAPHS[name]
    torch.manual_seed(0)
    params = {k: v.double() for k, v in graphs.params().items() if k in names.split()}
    x, y = torch.randn(3, 3, dtype=torch.float64), torch.tensor([0, 2, 1])
    results = {}
    previous = torch.get_default_dtype()
    for dtype in (torch.float64, torch.float16):
        torch.set_default_dtype(dtype)  # the graph's own constants
        try:
            leaves = {k: v.detach().to(dtype).requires_grad_(True) for k, v in params.items()}
            hesscale.backward(loss_fn(leaves, x.to(dtype), y)[0])
        finally:
            torch.set_default_dtype(previous)
        results[dtype] = {k: v.hesscale for k, v in leaves.items()}
    for k in params:
        h16, h64 = results[torch.float16][k], results[torch.float64][k]
        assert h16.dtype == torch.float16
        scale = h64.abs().max()
        torch.testing.assert_close(h16.double(), h64, rtol=0, atol=3e-2 * float(scale))
