"""hesscale.backward as a user meets it: results, options and errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hesscale
from hesscale.engine.backward import autograd_backward
from hesscale.errors import HesScaleError, UnsupportedOperationError
from tests.oracle import assert_close, exact_loss_diag

pytestmark = pytest.mark.usefixtures("float64")


def mlp(activation=nn.Tanh, widths=(4, 6, 3)):
    layers = []
    for a, b in zip(widths[:-1], widths[1:], strict=False):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers[:-1])


def data(n=5, d=4, c=3):
    return torch.randn(n, d), torch.randint(0, c, (n,))


def test_grad_is_autograds_and_every_parameter_gets_a_diagonal():
    torch.manual_seed(0)
    model, (x, y) = mlp(), data()
    F.cross_entropy(model(x), y).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    hesscale.backward(F.cross_entropy(model(x), y))
    for p, grad in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, grad, rtol=0, atol=0)
        assert p.hesscale.shape == p.shape and p.hesscale.dtype == p.dtype
        assert not hasattr(p, "hesscale_gn")


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU, nn.Sigmoid])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_last_layer_equals_exact_hessian_diagonal(activation, loss):
    torch.manual_seed(1)
    model, (x, _) = mlp(activation), data()
    y = torch.randint(0, 3, (5,)) if loss == "ce" else torch.randn(5, 3)
    loss_of = (lambda o: F.cross_entropy(o, y)) if loss == "ce" else (lambda o: F.mse_loss(o, y))
    hesscale.backward(loss_of(model(x)), gn="both")
    last, features = model[-1], model[:-1](x).detach()
    for name, p in last.named_parameters():

        def of(q, name=name):
            params = dict(last.named_parameters()) | {name: q}
            return loss_of(torch.func.functional_call(last, params, (features,)))

        exact = exact_loss_diag(of, p)
        assert_close(p.hesscale, exact)
        assert_close(p.hesscale_gn, exact)


def test_relu_networks_give_equal_variants_and_tanh_networks_do_not():
    torch.manual_seed(2)
    x, y = data()
    relu = mlp(nn.ReLU, (4, 8, 8, 3))
    hesscale.backward(F.cross_entropy(relu(x), y), gn="both")
    for p in relu.parameters():
        assert p.hesscale.abs().sum() > 0
        assert_close(p.hesscale, p.hesscale_gn)
    tanh = mlp(nn.Tanh, (4, 8, 3))
    hesscale.backward(F.cross_entropy(tanh(x), y), gn="both")
    assert (tanh[0].weight.hesscale - tanh[0].weight.hesscale_gn).abs().max() > 1e-6


def test_both_variants_in_one_pass_equal_separate_passes():
    torch.manual_seed(3)
    model, (x, y) = mlp(), data()
    hesscale.backward(F.cross_entropy(model(x), y), gn="both")
    both = [(p.hesscale.clone(), p.hesscale_gn.clone()) for p in model.parameters()]
    model.zero_grad()
    hesscale.backward(F.cross_entropy(model(x), y))
    model.zero_grad()
    hesscale.backward(F.cross_entropy(model(x), y), gn=True)
    for p, (h, h_gn) in zip(model.parameters(), both, strict=True):
        assert_close(p.hesscale, h)
        assert_close(p.hesscale_gn, h_gn)


def test_a_parameter_without_curvature_gets_zeros():
    w = torch.randn(3, requires_grad=True)
    hesscale.backward((w * torch.arange(3.0)).sum())
    assert torch.equal(w.hesscale, torch.zeros(3))


def test_unsupported_operation_raises_before_any_gradient():
    model, (x, _) = mlp(), data()
    loss = model(x).i0().sum()
    with pytest.raises(UnsupportedOperationError) as error:
        hesscale.backward(loss)
    message = str(error.value)
    assert "I0Backward0" in message
    assert "SumBackward0 -> I0Backward0" in message
    assert "hesscale.supported_operations()" in message
    assert all(p.grad is None for p in model.parameters())


def test_unsupported_operation_shows_the_forward_line_under_anomaly_mode():
    model, (x, _) = mlp(), data()
    with pytest.warns(UserWarning, match="Anomaly"), torch.autograd.detect_anomaly(False):
        loss = model(x).i0().sum()
    with pytest.raises(UnsupportedOperationError, match="test_engine_api.py"):
        hesscale.backward(loss)


@pytest.mark.parametrize(
    "loss, error",
    [
        (torch.ones(2, requires_grad=True) * 2, "must be a scalar"),
        (torch.tensor(1.0), "no grad_fn"),
    ],
)
def test_bad_losses(loss, error):
    with pytest.raises(HesScaleError, match=error):
        hesscale.backward(loss)


def test_bad_gn_value():
    model, (x, y) = mlp(), data()
    with pytest.raises(ValueError, match="gn="):
        hesscale.backward(F.cross_entropy(model(x), y), gn="yes")


def test_gn_asks_for_the_output_when_the_loss_is_hand_written():
    torch.manual_seed(4)
    model, (x, _) = mlp(), data()
    target = torch.randn(5, 3)
    out = model(x)
    with pytest.raises(HesScaleError, match="output="):
        hesscale.backward(((out - target) ** 2).mean(), gn=True)
    out = model(x)
    hesscale.backward(((out - target) ** 2).mean(), gn=True, output=out)
    gn_hand = [p.hesscale_gn.clone() for p in model.parameters()]
    model.zero_grad()
    hesscale.backward(F.mse_loss(model(x), target), gn=True)
    for p, h in zip(model.parameters(), gn_hand, strict=True):
        assert_close(p.hesscale_gn, h)


def test_gn_refuses_nll_on_something_else_than_log_softmax():
    model, (x, y) = mlp(), data()
    with pytest.raises(HesScaleError, match="does not come from a log_softmax"):
        hesscale.backward(F.nll_loss(torch.log(torch.softmax(model(x), 1)), y), gn=True)


def test_output_must_be_in_the_graph():
    model, (x, y) = mlp(), data()
    unrelated = model(x) * 1
    with pytest.raises(HesScaleError, match="does not depend on"):
        hesscale.backward(F.cross_entropy(model(x), y), gn=True, output=unrelated)


def test_inputs_restricts_the_leaves_like_backward():
    torch.manual_seed(5)
    model, (x, y) = mlp(), data()
    hesscale.backward(F.cross_entropy(model(x), y))
    expected = model[-1].weight.hesscale.clone()
    for p in model.parameters():
        p.grad = None
        del p.hesscale
    hesscale.backward(F.cross_entropy(model(x), y), inputs=[model[-1].weight])
    assert_close(model[-1].weight.hesscale, expected)
    assert model[0].weight.grad is None and not hasattr(model[0].weight, "hesscale")


def test_retain_graph_allows_a_second_pass():
    model, (x, y) = mlp(), data()
    loss = F.cross_entropy(model(x), y)
    hesscale.backward(loss, retain_graph=True)
    first = model[0].weight.hesscale.clone()
    model.zero_grad(set_to_none=True)
    hesscale.backward(loss)
    assert_close(model[0].weight.hesscale, first)


def test_unbatched_input_and_tied_weights():
    """A weight used twice sums what both uses send back."""
    torch.manual_seed(6)
    embed = torch.randn(5, 3, requires_grad=True)
    x = torch.randn(3)
    hidden = torch.tanh(embed @ x)
    logits = embed.T @ hidden  # the same matrix again, transposed
    hesscale.backward(F.cross_entropy(logits, torch.tensor(1)))
    assert embed.hesscale.shape == embed.shape
    assert embed.hesscale.abs().sum() > 0


def test_supported_operations_lists_families():
    families = hesscale.supported_operations()
    assert "AddmmBackward0" in families["linear_algebra"]
    assert "CtcLossBackward0" not in {n for names in families.values() for n in names}


def test_diagonals_accumulate_like_gradients_and_restart_after_zero_grad():
    torch.manual_seed(7)
    model = mlp()
    (x1, y1), (x2, y2) = data(), data()
    hesscale.backward(F.cross_entropy(model(x1), y1, reduction="sum"))
    hesscale.backward(F.cross_entropy(model(x2), y2, reduction="sum"))
    accumulated = [(p.grad.clone(), p.hesscale.clone()) for p in model.parameters()]
    for set_to_none in (True, False):
        model.zero_grad(set_to_none=set_to_none)
        x, y = torch.cat([x1, x2]), torch.cat([y1, y2])
        hesscale.backward(F.cross_entropy(model(x), y, reduction="sum"))
        for p, (grad, h) in zip(model.parameters(), accumulated, strict=True):
            torch.testing.assert_close(p.grad, grad, rtol=1e-12, atol=1e-14)
            assert_close(p.hesscale, h)


def test_a_plain_backward_in_between_is_refused():
    """The diagonal never silently pairs with a gradient it does not describe: after a plain
    loss.backward() changed p.grad, the next pass refuses to accumulate (issue 17; it used to
    restart the diagonal while p.grad kept accumulating)."""
    torch.manual_seed(8)
    model, (x, y) = mlp(), data()
    hesscale.backward(F.cross_entropy(model(x), y))
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(HesScaleError, match="changed since"):
        hesscale.backward(F.cross_entropy(model(x), y))
    model.zero_grad()
    hesscale.backward(F.cross_entropy(model(x), y))
    single = model[0].weight.hesscale.clone()
    for p in model.parameters():
        del p.hesscale  # deleting the diagonal also starts it afresh, beside an old gradient
    hesscale.backward(F.cross_entropy(model(x), y))
    assert_close(single, model[0].weight.hesscale)


def test_enable_serves_backward_calls_made_by_other_code():
    torch.manual_seed(9)
    model, (x, y) = mlp(), data()
    hesscale.backward(F.cross_entropy(model(x), y), gn="both")
    expected = [(p.hesscale.clone(), p.hesscale_gn.clone()) for p in model.parameters()]
    model.zero_grad()

    def framework_step():  # code we do not control
        F.cross_entropy(model(x), y).backward()

    with hesscale.enable(gn="both"):
        framework_step()
    for p, (h, h_gn) in zip(model.parameters(), expected, strict=True):
        assert_close(p.hesscale, h)
        assert_close(p.hesscale_gn, h_gn)
    assert torch.autograd.backward is autograd_backward


def test_enable_nests_restores_on_errors_and_refuses_what_it_cannot_serve():
    model, (x, y) = mlp(), data()
    original = torch.autograd.backward
    with pytest.raises(RuntimeError, match="boom"), hesscale.enable():
        with hesscale.enable(gn=True):
            pass
        assert torch.autograd.backward is not original
        raise RuntimeError("boom")
    assert torch.autograd.backward is original
    with hesscale.enable(), pytest.raises(HesScaleError, match="create_graph"):
        F.cross_entropy(model(x), y).backward(create_graph=True)
    with pytest.raises(ValueError, match="gn="), hesscale.enable(gn="maybe"):
        pass
    assert torch.autograd.backward is original


def test_enable_restores_exactly_what_it_replaced():
    """Another library's patch made after hesscale was imported is what comes back."""
    model, (x, y) = mlp(), data()
    calls = []

    def their_backward(*args, **kwargs):
        calls.append(1)
        return autograd_backward(*args, **kwargs)

    torch.autograd.backward = their_backward
    try:
        with hesscale.enable():
            with hesscale.enable(gn=True):
                F.cross_entropy(model(x), y).backward()
            assert torch.autograd.backward is not their_backward
        assert torch.autograd.backward is their_backward
        assert hasattr(model[0].weight, "hesscale_gn") and not calls
        F.cross_entropy(model(x), y).backward()
        assert calls == [1]
    finally:
        torch.autograd.backward = autograd_backward


def test_enable_is_per_thread():
    """A block in one thread leaves another thread's backward calls alone."""
    import threading

    model, (x, y) = mlp(), data()
    other = copy.deepcopy(model)
    inside, outside = threading.Event(), threading.Event()

    def worker():
        inside.wait()
        F.cross_entropy(other(x), y).backward()
        outside.set()

    thread = threading.Thread(target=worker)
    thread.start()
    with hesscale.enable():
        inside.set()
        assert outside.wait(60)
        F.cross_entropy(model(x), y).backward()
    thread.join()
    assert all(p.grad is not None for p in other.parameters())
    assert not any(hasattr(p, "hesscale") for p in other.parameters())
    assert all(hasattr(p, "hesscale") for p in model.parameters())
    assert torch.autograd.backward is autograd_backward


def test_enable_passes_the_seed_gradient_on():
    torch.manual_seed(10)
    model, (x, y) = mlp(), data()
    hesscale.backward(3.0 * F.cross_entropy(model(x), y))
    expected = [p.hesscale.clone() for p in model.parameters()]
    model.zero_grad()
    with hesscale.enable():
        F.cross_entropy(model(x), y).backward(torch.tensor(3.0))
    for p, h in zip(model.parameters(), expected, strict=True):
        assert_close(p.hesscale, h)


def test_activation_checkpointing_gets_a_clear_error():
    from torch.utils.checkpoint import checkpoint

    model, (x, y) = mlp(), data()
    x.requires_grad_(True)
    for reentrant, match in [(False, "checkpointing"), (True, "use_reentrant=True")]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hidden = checkpoint(lambda t: model[1](model[0](t)), x, use_reentrant=reentrant)
        with pytest.raises(HesScaleError, match=match):
            hesscale.backward(F.cross_entropy(model[2](hidden), y))
        model.zero_grad()


def test_compiled_regions_are_named_with_what_to_do():
    import hesscale.engine.graph  # noqa: F401  (declares the nodes it explains)
    from hesscale.engine.registry import UNSUPPORTED

    assert "model._orig_mod" in UNSUPPORTED["CompiledFunctionBackward"]


@pytest.mark.slow
def test_a_compiled_model_gets_a_clear_error():
    model, (x, y) = mlp(), data()
    compiled = torch.compile(model)
    with pytest.raises(UnsupportedOperationError, match="torch.compile"):
        hesscale.backward(F.cross_entropy(compiled(x), y))
    hesscale.backward(F.cross_entropy(compiled._orig_mod(x), y))
    assert model[0].weight.hesscale.abs().sum() > 0


def test_no_hidden_state_on_users_tensors_and_a_graph_built_whole():
    """hesscale.backward leaves only the documented attributes on a parameter (nothing on the
    diagonal tensors), and a Graph holds its rules as soon as it exists."""
    from hesscale.engine.graph import Graph

    model, (x, y) = mlp(), data()
    loss = F.cross_entropy(model(x), y)
    graph = Graph(loss.grad_fn)
    assert set(graph.rules) == set(graph.edges) and graph.reshuffles is not None
    assert graph.has_module_hooks is False
    hesscale.backward(loss, gn="both")
    for p in model.parameters():
        assert set(vars(p)) <= {"hesscale", "hesscale_gn"}, vars(p)
        assert not vars(p.hesscale) and not vars(p.hesscale_gn)


def test_operation_names_lists_every_node_of_the_graph():
    from hesscale.engine.graph import operation_names

    layer = torch.nn.Linear(3, 2)
    out = torch.tanh(layer(torch.randn(4, 3))).sum()
    assert operation_names(out) == {
        "SumBackward0", "TanhBackward0", "AddmmBackward0", "TBackward0",
        "torch::autograd::AccumulateGrad",
    }  # fmt: skip
