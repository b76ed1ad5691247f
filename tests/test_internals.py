"""Every private torch / BackPACK API hesscale relies on (hesscale.internals), checked directly:
these tests fail loudly when a torch or BackPACK release changes one of them."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from backpack.extensions.backprop_extension import BackpropExtension
from torch import nn

from hesscale import HesScale, internals


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


# --- the BackPACK adaptor's entries -----------------------------------------------------------


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


def test_what_hesscale_reads_from_distributed_data_parallel(tmp_path):
    """DDP's output node names its module (ctx.ddp_weakref), ``require_forward_param_sync``
    tells whether this backward synchronises, and constructing DDP registers its wrapped module
    (which the engine's registration hook notes)."""
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from hesscale import ddp_modules

    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        ddp = DDP(nn.Linear(3, 2), find_unused_parameters=True)
        out = ddp(torch.randn(4, 3))
        assert out.grad_fn.name() == "_DDPSinkBackward"
        assert internals.ddp_of_output_node(out.grad_fn) is ddp
        assert internals.ddp_of_output_node(out.grad_fn.next_functions[0][0]) is None
        assert internals.ddp_syncs_this_backward(ddp)
        with ddp.no_sync():
            ddp(torch.randn(4, 3))
        assert not internals.ddp_syncs_this_backward(ddp)
        assert internals.ddp_parameters(ddp) == list(ddp.module.parameters())
        assert internals.ddp_process_group(ddp) is not None
        assert ddp in ddp_modules.known
        del ddp, out
    finally:
        gc.collect()
        dist.destroy_process_group()


def test_saved_under_checkpoint_tells_non_reentrant_checkpointing_apart():
    """A node saved under torch.utils.checkpoint(use_reentrant=False) carries the unpack hook
    of torch's _checkpoint_hook; one outside does not, nor one under other saved-tensor hooks."""
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(3, requires_grad=True)
    inside = checkpoint(torch.tanh, x * 2, use_reentrant=False)
    assert internals.saved_under_checkpoint(inside.grad_fn)
    assert not internals.saved_under_checkpoint(torch.tanh(x).grad_fn)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert not internals.saved_under_checkpoint(torch.tanh(x).grad_fn)
    assert not internals.saved_under_checkpoint((x + 1).grad_fn)  # saves no tensor


@pytest.mark.parametrize("name", internals.MULTI_TENSOR_OPS)
def test_multi_tensor_ops_exist_and_act_per_tensor(name):
    """Each torch._foreach_<name> the optimizers use exists and equals the one-tensor op."""
    op = getattr(internals.multi_tensor, name)
    a = [torch.tensor([1.0, -2.0]), torch.tensor([[3.0], [0.5]])]
    b = [torch.tensor([0.5, 4.0]), torch.tensor([[2.0], [1.0]])]
    base = name.rstrip("_")
    args = {
        "abs": (), "neg": (), "sqrt": (), "norm": (2.0,), "add": (b,), "sub": (b,),
        "mul": (b,), "div": (b,), "maximum": (b,), "lerp": (b, 0.3), "pow": (2.0,),
        "clamp_min": (0.7,), "clamp_max": (0.7,), "addcmul": (b, b), "addcdiv": (b, b),
    }[base]  # fmt: skip
    inputs = [t.abs() if base == "sqrt" else t for t in a]
    expected = []
    for i, t in enumerate(inputs):
        per_tensor = [x[i] if isinstance(x, list) else x for x in args]
        expected.append(torch.linalg.vector_norm(t, 2.0) if base == "norm" else
                        getattr(torch, base)(t, *per_tensor))  # fmt: skip
    copies = [t.clone() for t in inputs]
    result = op(copies, *args)
    got = copies if name.endswith("_") else result
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_is_concrete_cpu_tells_real_cpu_tensors_from_traced_ones():
    """rules.matmul.fits_square reads a value only from real CPU tensors, never while make_fx
    traces (hesscale.compile), where it would bake one call's data into the graph."""
    seen = []

    def fn(x):
        seen.append(internals.is_concrete_cpu(x))
        return x * 2

    assert internals.is_concrete_cpu(torch.ones(3))
    assert internals.is_concrete_cpu(nn.Parameter(torch.ones(3)))
    assert not internals.is_concrete_cpu(torch.ones(3, device="meta"))
    internals.trace_aten(fn, torch.ones(3))
    assert seen == [False]
