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


def test_output_dtype_of_a_node():
    x = torch.randn(3, 4, requires_grad=True)
    assert internals.output_dtype((x.half() * 2).grad_fn, 0) == torch.float16
    assert internals.output_dtype((x * 2).grad_fn, 0) == torch.float32


def test_output_shape_of_a_node():
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.randn(4, requires_grad=True)
    node = (x + y).grad_fn
    child, nr = node.next_functions[1]
    assert internals.output_shape(child, nr) == (4,)


def test_forward_traceback_under_anomaly_mode():
    x = torch.randn(3, requires_grad=True)
    assert internals.forward_traceback((x * 2).grad_fn) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autograd.detect_anomaly(check_nan=False):
            y = x * 2
    assert "test_internals.py" in internals.forward_traceback(y.grad_fn)


def test_copy_slices_exposes_the_wrapped_in_place_node():
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.randn(3, requires_grad=True)
    a = x * 1
    a[:, 0] = y
    node = a.grad_fn
    assert node.name() == "torch::autograd::CopySlices"
    wrapped = internals.wrapped_node(node)
    assert wrapped.name() == "torch::autograd::CopyBackwards"
    # the wrapped node's first input is the view (taken from the base), the others are shared
    assert wrapped.next_functions[0][0].name() == "SelectBackward0"
    assert wrapped.next_functions[0][0].next_functions[0][0] is node.next_functions[0][0]
    assert wrapped.next_functions[1][0] is node.next_functions[1][0]
    assert internals.output_shape(wrapped, 0) == (3,)
    b = x * 1
    b[:, :2].mul_(2)
    assert internals.wrapped_node(b.grad_fn).name() == "MulBackward0"
    assert internals.wrapped_node(x.exp().grad_fn) is None


def test_grad_stamp_changes_with_in_place_updates():
    g = torch.zeros(3)
    stamp = internals.grad_stamp(g)
    assert internals.grad_stamp(g) == stamp
    g.add_(1)
    assert internals.grad_stamp(g) != stamp
