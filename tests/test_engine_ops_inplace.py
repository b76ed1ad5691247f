"""Writes into tensors: copies, fills, index_put / scatter / index_add, and in-place
operations on views (CopySlices) against the definition (per operation where one operation on
leaves records the node, otherwise whole graphs against the graph oracle, which evaluates the
functionalised, out-of-place program)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hesscale
from hesscale.errors import UnsupportedOperationError
from tests.engine_checks import check_graph, check_op

pytestmark = pytest.mark.usefixtures("float64")


def r(*shape, low=None):
    t = torch.randn(*shape, dtype=torch.float64)
    return t if low is None else t.abs() + low


ROWS = torch.tensor([2, 0])
MASK = torch.tensor([[True, False, True, False], [False, False, True, True], [True] * 4])
INDEX = torch.tensor([[0, 2], [3, 3], [1, 0]])  # repeated entries in row 1


def zeros(*shape):
    return torch.zeros(*shape, dtype=torch.float64)


def setitem_constant(y):
    buf = zeros(3, 4)
    buf[:, 1] = y
    return buf


def add_into_constant_view(y):
    buf = zeros(3, 4)
    buf[:, 1:3].add_(y, alpha=-2)
    return buf


def mul_into_constant_view(y):
    buf = torch.ones(3, 4, dtype=torch.float64)
    buf[1:].mul_(y)
    return buf


def addcmul_into_constant_view(a, b):
    buf = torch.ones(3, 4, dtype=torch.float64)
    buf[:, ::2].addcmul_(a, b, value=0.5)
    return buf


def copy_into_constant(y):
    return zeros(3, 4).copy_(y)


def fill_constant_with_tensor(v):
    return zeros(3).fill_(v)


# (id, fn, inputs, grad): fn(*inputs) records one node; grad says which inputs require grad
CASES = [
    ("copy", copy_into_constant, (r(4),), None),
    ("index-put", lambda x, y: x.index_put((ROWS,), y), (r(3, 4), r(4)), None),
    ("index-put-accumulate-repeated",
     lambda x, y: x.index_put((torch.tensor([1, 1, 0]),), y, accumulate=True),
     (r(3, 4), r(3, 4)), None),
    ("index-put-mask", lambda x, y: x.index_put((MASK,), y), (r(3, 4), r(())), None),
    ("masked-scatter", lambda x, y: x.masked_scatter(MASK, y), (r(3, 4), r(12)), None),
    ("scatter", lambda x, y: x.scatter(1, INDEX, y), (r(3, 4), r(3, 2)), None),
    ("scatter-value", lambda x: x.scatter(1, INDEX, 2.0), (r(3, 4),), None),
    ("scatter-add", lambda x, y: x.scatter_add(1, INDEX, y), (r(3, 4), r(3, 2)), None),
    ("scatter-reduce-sum", lambda x, y: x.scatter_reduce(1, INDEX, y, "sum"),
     (r(3, 4), r(3, 2)), None),
    ("scatter-reduce-mean", lambda x, y: x.scatter_reduce(1, INDEX, y, "mean"),
     (r(3, 4), r(3, 2)), None),
    ("scatter-reduce-mean-exclude-self",
     lambda x, y: x.scatter_reduce(1, INDEX, y, "mean", include_self=False),
     (r(3, 4), r(3, 2)), None),
    ("scatter-reduce-amax-ties", lambda x, y: x.scatter_reduce(1, INDEX, y, "amax"),
     (zeros(3, 4) + 1, zeros(3, 2) + 1), None),
    ("scatter-reduce-amin", lambda x, y: x.scatter_reduce(1, INDEX, y, "amin"),
     (r(3, 4), r(3, 2)), None),
    ("scatter-reduce-prod", lambda x, y: x.scatter_reduce(1, INDEX, y, "prod"),
     (r(3, 4), r(3, 2)), None),
    ("index-add", lambda x, y: x.index_add(0, torch.tensor([2, 2]), y, alpha=-1.5),
     (r(3, 4), r(2, 4)), None),
    ("index-copy", lambda x, y: x.index_copy(0, ROWS, y), (r(3, 4), r(2, 4)), None),
    ("index-fill", lambda x: x.index_fill(1, ROWS, -1.0), (r(3, 4),), None),
    ("index-fill-tensor", lambda x, v: x.index_fill(1, ROWS, v), (r(3, 4), r(())), None),
    ("fill", lambda x: torch.fill(x, 2.0), (r(3, 4),), None),
    ("fill-tensor", lambda x, v: torch.fill(x, v), (r(3, 4), r(())), None),
    ("fill-in-place-tensor", fill_constant_with_tensor, (r(()),), None),
    # in-place operations on a view of a tensor that needs no gradient (CopySlices)
    ("setitem", setitem_constant, (r(3),), None),
    ("add-into-view", add_into_constant_view, (r(3, 2),), None),
    ("mul-into-view", mul_into_constant_view, (r(4),), None),
    ("addcmul-into-view", addcmul_into_constant_view, (r(3, 2), r(2)), None),
]  # fmt: skip


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)


# nodes that no single operation on leaves records, and the test that checks each
WHOLE = "test_engine_ops_inplace.py::test_in_place_graph_matches_oracle[*-whole-tensor-writes]"
COVERED_ELSEWHERE = {"FillBackward2": WHOLE, "ZeroBackward0": WHOLE}


# whole graphs ------------------------------------------------------------------------------


def trunk(p, x):
    """A non-leaf tensor to write into (N, 6); addmm does not save its output."""
    return F.linear(x, p["w0"], p["b0"])


def head(p, h, y):
    out = F.linear(torch.tanh(h), p["w1"], p["b1"])
    return F.cross_entropy(out, y), (out,)


def constant(n, columns):
    """Fixed values that need no gradient."""
    return torch.linspace(-1, 1, n * columns).reshape(n, columns)


def views(p, x, y):
    """0/1 and entrywise-linear writes into views of a tensor that needs a gradient."""
    n = x.shape[0]
    h = trunk(p, x)
    h[:, 0] = F.linear(x, p["w2"])[:, 0]  # setitem
    h[..., 4:].mul_(2.5)
    h[:, 1:3].mul_(p["s"])
    h.narrow(1, 1, 2).add_(p["s"], alpha=-0.5)
    h[1:, 3].addcmul_(p["s"][:1].expand(n - 1), constant(n - 1, 1)[:, 0], value=2.0)
    h[:, 5].lerp_(constant(n, 1)[:, 0], 0.25)
    h[:, :2].div_(3.0)
    h[0, :].zero_()
    h[-1, 1:3].fill_(0.5)
    h[:, 3].clamp_(-0.3, 0.3)
    h.t()[4].masked_fill_(torch.arange(n) % 2 == 0, 0.0)
    h[:, 2:4].copy_(F.linear(x, p["w2"])[:, :1])  # a broadcast copy
    return head(p, h, y)


CURVED_WRITES = [  # an operation that saves its input or output ends the writes into a base
    lambda h, p: h[:, 1:3].exp_(),
    lambda h, p: h[0, 3:].sigmoid_(),
    lambda h, p: h.t()[3][1:].tanh_(),
    lambda h, p: h.view(-1)[::7].pow_(2),
    lambda h, p: h[1:, 5].div_(p["s"][0] + 2),  # by a tensor that needs a gradient
    lambda h, p: h[1:, 0].abs_(),
    lambda h, p: h[:, 4].addcdiv_(constant(h.shape[0], 1)[:, 0], p["s"][1].abs() + 1, value=0.5),
    lambda h, p: h[:, :2].mul_(2).log_softmax(1),  # not in place: reads the written view
    lambda h, p: h[1:, 2:].mul_(h[:-1, :4].detach().clone()).sin_(),
]


def curved_writes(p, x, y):
    """Writes whose operation has curvature or a full Jacobian (restricted to the view), each
    into its own base."""
    total = 0
    for write in CURVED_WRITES:
        h = trunk(p, x)
        write(h, p)
        total = total + h
    return head(p, total, y)


def nested_views(p, x, y):
    """Views of views; a view taken, its base changed, then the view written (autograd
    regenerates the view's node as an as_strided of the new base)."""
    h = trunk(p, x)
    column = h[:, 1]
    h.mul_(p["s"][:1] + 1)
    inner = h[:, 2:]
    inner.mul_(2)
    h.diagonal().mul_(p["s"][1])
    column.exp_()
    g = trunk(p, x)
    g[:, 1:][:, 2:].sigmoid_()
    return head(p, h + g, y)


def index_writes(p, x, y):
    """Advanced-index assignment, masks, scatter, index_add into a tensor needing a gradient."""
    n = x.shape[0]
    h = trunk(p, x)
    h[torch.tensor([0, -1])] = F.linear(x[:1], p["w0"]).expand(2, 6)
    h[h > 0.5] = 0.5
    h.index_put_((torch.tensor([0, 0]),), p["s"].repeat(3).expand(2, 6), accumulate=True)
    h[:, torch.tensor([1, 4])] = F.linear(x, p["w2"])
    h.scatter_(1, (torch.arange(n) % 6).unsqueeze(1), 1.5)
    h.scatter_add_(1, torch.full((n, 2), 3), constant(n, 2) * p["s"])
    h.index_add_(1, torch.tensor([0, 0]), F.linear(x, p["w2"])[:, :2], alpha=-2.0)
    h.masked_scatter_(constant(n, 6) < -0.2, torch.tanh(F.linear(x, p["w0"])).reshape(-1))
    return head(p, h, y)


def whole_tensor_writes(p, x, y):
    """In-place writes on whole non-leaf tensors (no view)."""
    h = trunk(p, x)
    g = trunk(p, x)
    g.zero_()
    k = trunk(p, x)
    k.fill_(0.5)
    u = trunk(p, x)
    u.copy_(F.linear(x, p["w2"])[:, :1])
    h.mul_(p["s"][0]).add_(g).add_(k).sub_(u, alpha=2)
    return head(p, h, y)


def constant_buffers(p, x, y):
    """Writes into buffers that need no gradient: the RNN-output pattern."""
    n = x.shape[0]
    states = torch.zeros(n, 3, 6)
    h = torch.tanh(trunk(p, x))
    for t in range(3):
        h = torch.tanh(F.linear(h, p["w3"]))
        states[:, t] = h
    acc = torch.zeros(n, 6)
    acc[:, 1:] += states[:, 1, 1:]
    acc[:, :2] *= states[:, 2, :2]
    acc[0, :2].addcmul_(states[0, 0, :2], p["s"])
    return head(p, states.sum(1) + acc, y)


def activations(p, x, y):
    """In-place activations that save their output."""
    h = F.elu(trunk(p, x), 0.7, inplace=True)
    h = F.threshold(F.linear(h, p["w3"]), 0.1, 0.05, inplace=True)
    h = F.leaky_relu(F.linear(h, p["w3"]), 0.1, inplace=True)
    return head(p, h, y)


def params():
    return {
        "w0": r(6, 3), "b0": r(6), "w1": r(3, 6), "b1": r(3), "w2": r(2, 3), "w3": r(6, 6) / 2,
        "s": r(2) / 2 + 1,
    }  # fmt: skip


GRAPHS = {  # the graph and the parameters it uses
    "views": (views, "w0 b0 w1 b1 w2 s"),
    "curved-writes": (curved_writes, "w0 b0 w1 b1 s"),
    "nested-views": (nested_views, "w0 b0 w1 b1 s"),
    "index-writes": (index_writes, "w0 b0 w1 b1 w2 s"),
    "constant-buffers": (constant_buffers, "w0 b0 w1 b1 w3 s"),
    "whole-tensor-writes": (whole_tensor_writes, "w0 b0 w1 b1 w2 s"),
    "activations": (activations, "w0 b0 w1 b1 w3"),
}


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("batch", [2, 3])
def test_in_place_graph_matches_oracle(name, batch):
    torch.manual_seed(batch)
    loss_fn, names = GRAPHS[name]
    used = {k: v for k, v in params().items() if k in names.split()}
    check_graph(loss_fn, used, r(batch, 3), torch.randint(0, 3, (batch,)))


def celu_in_place(p, x, y):
    h = F.celu(trunk(p, x), 0.7, inplace=True)
    return head(p, h, y)


def test_in_place_celu_matches_oracle():
    """torch's own celu_ backward is off by ~1e-8 relative in float64 (it rounds a constant
    to single precision), so p.grad, and with it this comparison, holds to 1e-6 only."""
    torch.manual_seed(0)
    used = {k: v for k, v in params().items() if k in ("w0", "b0", "w1", "b1")}
    check_graph(celu_in_place, used, r(3, 3), torch.tensor([0, 2, 1]), rtol=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_in_place_rrelu_equals_out_of_place(training):
    """Functionalisation cannot trace rrelu_, so the oracle is the out-of-place rrelu (checked
    against the definition per operation) on the same random slopes."""
    torch.manual_seed(0)
    p = params()
    x, y = r(4, 3), torch.tensor([0, 2, 1, 1])
    results = []
    for inplace in (False, True):
        leaves = {k: p[k].clone().requires_grad_(True) for k in ("w0", "b0", "w1", "b1")}
        torch.manual_seed(1)
        h = F.rrelu(trunk(leaves, x), 0.1, 0.3, training=training, inplace=inplace)
        name = h.grad_fn.name()
        hesscale.backward(head(leaves, h, y)[0], gn="both")
        results.append((name, {k: (v.hesscale, v.hesscale_gn, v.grad) for k, v in leaves.items()}))
    (plain, expected), (in_place, got) = results
    assert (plain, in_place) == ("RreluWithNoiseBackward0", "RreluWithNoiseBackward1")
    for k in expected:
        for a, b in zip(got[k], expected[k], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_index_put_accumulating_broadcast_values_is_refused():
    x = r(3, 4).requires_grad_(True)
    v = r(4).requires_grad_(True)
    h = x * 1
    h.index_put_((torch.tensor([0, 0]),), v, accumulate=True)
    with pytest.raises(UnsupportedOperationError, match="expand the values"):
        hesscale.backward(h.sum())
    h = x * 1  # expanded first: each entry of the expanded values is added once
    h.index_put_((torch.tensor([0, 0]),), v.expand(2, 4), accumulate=True)
    hesscale.backward(h.square().sum())
    # op by op: each expanded copy receives the square's 2, and the expand sums the two copies
    assert torch.equal(v.hesscale, torch.full((4,), 4.0))


def test_writes_into_a_view_of_a_constant_need_the_out_of_place_form():
    """A write with curvature into a view of a tensor that needs no gradient: autograd does
    not record the view's position, so it is refused before the backward pass, naming the
    operation and the form that works."""
    y = (r(3) + 2).requires_grad_(True)
    buf = torch.ones(3, 4)
    buf[:, 0].div_(y)
    with pytest.raises(UnsupportedOperationError, match=r"DivBackward0 writes into a view.*cat"):
        hesscale.backward(buf.sum())
    assert y.grad is None  # nothing ran
    buf = torch.ones(3, 4)
    buf = torch.cat([buf[:, :1] / y[:, None], buf[:, 1:]], 1)
    hesscale.backward(buf.square().sum())
    expected = 6 / y.detach() ** 4  # d^2/dy^2 (1 / y)^2
    torch.testing.assert_close(y.hesscale, expected, rtol=1e-12, atol=0)


def test_writes_with_curvature_restrict_to_the_view_through_its_recorded_chain():
    """Which of CopySlices' three paths a write takes (the graphs above check the values)."""
    from hesscale.engine.ops.inplace import _is_entrywise, view_chain
    from hesscale.internals import wrapped_node

    x = r(3, 4).requires_grad_(True)
    h = x * 1
    h[:, 1:3].exp_()
    assert [n.name() for n in view_chain(h.grad_fn)] == ["SliceBackward0"]
    h = x * 1
    column = h[:, 1]
    h.mul_(2)
    column.exp_()  # the view's node was regenerated from the modified base
    assert [n.name() for n in view_chain(h.grad_fn)] == ["AsStridedBackward0"]
    h = x * 1
    h.t()[1][1:].mul_(x[1:, 0])
    assert _is_entrywise(wrapped_node(h.grad_fn))
    assert [n.name() for n in view_chain(h.grad_fn)] == ["SliceBackward0", "SelectBackward0",
                                                         "TBackward0"]  # fmt: skip
    buf = torch.ones(3, 4)
    buf[:, 0].div_(x[:, 0])
    assert view_chain(buf.grad_fn) is None  # the buffer needs no gradient: no chain
    buf[:, 1:].exp_()  # now it does (through the first write)
    assert [n.name() for n in view_chain(buf.grad_fn)] == ["SliceBackward0"]


def test_an_unsupported_in_place_operation_on_a_view_is_named():
    x = r(3, 4).requires_grad_(True)
    h = x * 1
    h[:, 1:].i0_()
    with pytest.raises(UnsupportedOperationError, match="wraps the in-place operation I0"):
        hesscale.backward(h.sum())
    assert x.grad is None
