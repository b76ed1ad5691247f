"""Each private torch / BackPACK API that hesscale.internals wraps still behaves as hesscale
relies on. A failure here means a new torch or BackPACK release changed it: fix internals.py."""

import pytest
import torch
import torch.nn.functional as F
from backpack.extensions.backprop_extension import BackpropExtension
from torch import nn

from hesscale import HesScale, internals


def backward_with_hook(hook, **backward_kwargs):
    """Run a backward pass through a tiny graph, calling ``hook()`` while the pass runs."""
    w1, w2 = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    h = w1 * 2.0
    h.register_hook(lambda grad: hook())
    ((h * w2).sum()).backward(**backward_kwargs)
    return w1, w2


def test_current_graph_task_id_tells_passes_apart():
    assert internals.current_graph_task_id() == -1  # no backward pass running
    seen = []
    backward_with_hook(lambda: seen.append(internals.current_graph_task_id()))
    backward_with_hook(lambda: seen.append(internals.current_graph_task_id()))
    assert len(seen) == 2 and min(seen) >= 0 and seen[0] != seen[1]


def test_queue_engine_callback_runs_at_the_end_and_raises_out_of_backward():
    events = []

    def hook():
        events.append("hook")
        internals.queue_engine_callback(lambda: events.append("end"))

    w1, _ = backward_with_hook(hook)
    assert events == ["hook", "end"] and w1.grad is not None

    def failing_callback():
        raise ValueError("from the callback")

    with pytest.raises(ValueError, match="from the callback"):
        backward_with_hook(lambda: internals.queue_engine_callback(failing_callback))


def test_queue_engine_callback_does_not_run_when_the_pass_fails():
    events = []

    def hook():
        internals.queue_engine_callback(lambda: events.append("end"))
        raise KeyError("hook failed")

    with pytest.raises(KeyError):
        backward_with_hook(hook)
    assert events == []


def test_will_engine_execute_sees_backward_inputs():
    seen = {}
    w, x = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    h, k = w * x, x * 3.0  # h leads to w and x, k to x alone
    out = h.sum() + k.sum()

    def probe(grad):
        seen.update(
            h=internals.will_engine_execute(h.grad_fn), k=internals.will_engine_execute(k.grad_fn)
        )

    h.register_hook(probe)
    out.backward(inputs=[w], retain_graph=True)
    assert seen == {"h": True, "k": False}
    out.backward()
    assert seen == {"h": True, "k": True}


def test_backward_hook_node_name():
    module = nn.Linear(2, 2)
    module.register_full_backward_hook(lambda *args: None)
    out = module(torch.ones(1, 2))
    assert out.grad_fn.name() == internals.BACKWARD_HOOK_NODE


def test_order_preserving_node_names():
    """What a reshape records: a view, or (channels_last input) a copy and a view of it."""
    h = torch.randn(2, 3, 4, 4, requires_grad=True) * 1.0
    for t in (h.view(2, -1), h.contiguous(memory_format=torch.channels_last).reshape(2, -1)):
        names, node = [], t.grad_fn
        while node is not h.grad_fn:
            names.append(node.name())
            node = node.next_functions[0][0]
        assert names and set(names) <= internals.ORDER_PRESERVING_NODES, names


def test_saved_quantities_of_a_backpack_extension_can_be_counted_and_cleared():
    extension = HesScale()
    assert isinstance(extension, BackpropExtension)
    extension.saved_quantities.save_quantity(1, torch.ones(2), lambda a, b: a + b)
    assert internals.saved_quantity_count(extension) == 1
    internals.clear_saved_quantities(extension)
    assert internals.saved_quantity_count(extension) == 0
    assert extension.saved_quantities.retrieve_quantity(1, delete_old=True) is None


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("batched", [True, False])
def test_adaptive_avg_pool_backward_is_the_vjp(spatial_dims, batched):
    torch.manual_seed(0)
    shape = (2, 3, 7, 5, 6)[: 2 + spatial_dims] if batched else (3, 7, 5, 6)[: 1 + spatial_dims]
    x = torch.randn(shape, requires_grad=True)
    pool = F.adaptive_avg_pool2d if spatial_dims == 2 else F.adaptive_avg_pool3d
    out = pool(x, (3, 4, 2)[:spatial_dims])
    grad = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, x, grad)
    actual = internals.adaptive_avg_pool_backward(grad, x.detach(), spatial_dims)
    torch.testing.assert_close(actual, expected)
