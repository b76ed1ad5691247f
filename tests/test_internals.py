"""Every private torch API hesscale relies on (hesscale.internals), checked directly: these
tests fail loudly when a torch release changes one of them."""

from __future__ import annotations

import warnings

import torch

from hesscale import internals


def test_saved_values_of_the_nodes_common_models_record():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(5, 4, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    addmm = torch.nn.functional.linear(x, w, b).grad_fn
    assert addmm.name() == "AddmmBackward0"
    assert torch.equal(internals.saved_value(addmm, "mat1"), x)
    assert torch.equal(internals.saved_value(addmm, "mat2"), w.t())
    assert internals.saved_value(addmm, "alpha") == 1
    tanh = torch.tanh(x).grad_fn
    assert torch.equal(internals.saved_value(tanh, "result"), torch.tanh(x))
    assert internals.has_saved_value(tanh, "result")
    assert not internals.has_saved_value(tanh, "self")


def test_negative_saved_ints_come_back_signed():
    x = torch.randn(2, 3, requires_grad=True)
    assert internals.saved_value(x.log_softmax(-1).grad_fn, "dim") == -1
    assert internals.saved_value(x.unsqueeze(-1).grad_fn, "dim") in (-1, 2)


def test_accumulate_grad_nodes_expose_their_leaf():
    x = torch.randn(3, requires_grad=True)
    node = (x * 2).grad_fn.next_functions[0][0]
    assert internals.accumulated_variable(node) is x
    assert internals.accumulated_variable((x * 2).grad_fn) is None


def test_apply_backward_runs_the_formula_without_hooks():
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.randn(4, requires_grad=True)
    node = (x + y).grad_fn
    calls = []
    node.register_hook(lambda *args: calls.append(args))
    grads = internals.apply_backward(node, torch.ones(3, 4))
    assert isinstance(grads, tuple) and len(grads) == 2
    assert torch.equal(grads[0], torch.ones(3, 4))
    assert calls == []
    single = internals.apply_backward(x.t().grad_fn, torch.ones(4, 3))
    assert isinstance(single, tuple) and single[0].shape == (3, 4)


def test_output_shape_of_a_node():
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.randn(4, requires_grad=True)
    node = (x + y).grad_fn
    child, nr = node.next_functions[1]
    assert internals.output_shape(child, nr) == (4,)


def test_output_count_of_a_node():
    x = torch.randn(2, 4, 3, requires_grad=True)
    assert internals.output_count((x * 2).grad_fn) == 1
    assert internals.output_count(torch.nn.functional.group_norm(x, 2).grad_fn) == 3  # mean, rstd


def test_wrapped_node_of_copy_slices():
    x = torch.randn(3, 4, requires_grad=True)
    y = x * 1
    y[:, 1:3] = x[:, :2]  # a copy into a view of y
    assert y.grad_fn.name() == "torch::autograd::CopySlices"
    assert internals.wrapped_node(y.grad_fn).name() == "torch::autograd::CopyBackwards"
    z = x * 1
    z[:, 0].mul_(2)
    assert internals.wrapped_node(z.grad_fn).name() == "MulBackward0"
    assert internals.wrapped_node((x * 2).grad_fn) is None


def test_forward_traceback_under_anomaly_mode():
    x = torch.randn(3, requires_grad=True)
    assert internals.forward_traceback((x * 2).grad_fn) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autograd.detect_anomaly(check_nan=False):
            y = x * 2
    assert "test_internals.py" in internals.forward_traceback(y.grad_fn)
