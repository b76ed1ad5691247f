"""Per-operation rules for the activations beyond the BackPACK adaptor's set (hardswish,
hardsigmoid, relu6, shrinkage, threshold, GLU, PReLU, RReLU) against the definition computed
by brute force for that one operation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.engine_checks import check_op


def r(*shape, scale=1.0):
    return torch.randn(*shape, dtype=torch.float64) * scale


def rrelu_training(x):
    torch.manual_seed(0)  # the same random slopes in every evaluation of the oracle
    return F.rrelu(x, 0.1, 0.4, training=True)


PRELU = torch.ops.aten._prelu_kernel

# (id, fn, inputs, grad): fn(*inputs) records one node; grad says which inputs require grad
CASES = [
    ("hardswish", F.hardswish, (r(4, 5, scale=3),), None),
    ("relu6", F.relu6, (r(4, 5, scale=4),), None),
    ("softshrink", lambda x: F.softshrink(x, 0.3), (r(4, 5),), None),
    ("hardshrink", lambda x: F.hardshrink(x, 0.3), (r(4, 5),), None),
    ("threshold", lambda x: F.threshold(x, 0.1, 2.0), (r(4, 5),), None),
    ("glu", lambda x: F.glu(x, 1), (r(3, 4),), None),
    ("glu-dim0", lambda x: F.glu(x, 0), (r(4, 3),), None),
    # the kernel F.prelu calls, on the weight viewed to broadcast against x (as F.prelu does)
    ("prelu-channels", PRELU, (r(2, 3, 4), torch.rand(3, 1, dtype=torch.float64)), None),
    ("prelu-shared", PRELU, (r(2, 3, 2, 2), torch.rand(1, 1, 1, 1, dtype=torch.float64)), None),
    ("prelu-2d", PRELU, (r(5, 3), torch.rand(1, 3, dtype=torch.float64)), None),
    ("prelu-input-only", PRELU, (r(5, 3), torch.rand(1, 3, dtype=torch.float64)), (True, False)),
    ("rrelu-eval", lambda x: F.rrelu(x, 0.1, 0.4, training=False), (r(4, 5),), None),
    ("rrelu-training", rrelu_training, (r(4, 5),), None),
]  # fmt: skip


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)


def test_hardsigmoid_matches_definition():
    """torch cannot differentiate hardsigmoid twice, so the definition is evaluated on the
    same function written as relu6(x + 3) / 6."""
    from hesscale.engine.backward import node_diagonals
    from tests.engine_oracle import op_definition
    from tests.oracle import assert_close

    x = r(4, 5, scale=3).requires_grad_(True)
    h, g = r(4, 5), r(4, 5)
    node = F.hardsigmoid(x).grad_fn
    assert node.name() == "HardsigmoidBackward0"
    for second_order in (True, False):
        (got,) = node_diagonals(node, [h], [g], second_order=second_order)
        expected = op_definition(
            lambda t: F.relu6(t + 3) / 6, [x], 0, [h], [g] if second_order else None
        )
        assert_close(got, expected)


def test_prelu_module_matches_oracle():
    """nn.PReLU records its weight's view and the kernel: the whole graph against the oracle."""
    from tests.engine_checks import check_graph

    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(
        nn.Linear(4, 6), nn.Unflatten(1, (3, 2)), nn.PReLU(3), nn.Flatten(), nn.Linear(6, 2)
    ).double()
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_fn(p, x, y):
        out = torch.func.functional_call(model, p, (x,))
        return F.cross_entropy(out, y), (out,)

    check_graph(loss_fn, params, r(3, 4), torch.tensor([0, 1, 1]))


# nodes that no single operation on leaves records, and the test that checks each
COVERED_ELSEWHERE = {
    "HardsigmoidBackward0": "test_engine_ops_activations.py::test_hardsigmoid_matches_definition",
    "CeluBackward1": "test_engine_ops_inplace.py::test_in_place_graph_matches_oracle[activations]",
    "RreluWithNoiseBackward1":
        "test_engine_ops_inplace.py::test_in_place_graph_matches_oracle[activations]",
    "ThresholdBackward1":
        "test_engine_ops_inplace.py::test_in_place_graph_matches_oracle[activations]",
}  # fmt: skip


# functions torch builds from primitive operations, and hand-written layers, in a network ----


def manual_layer_norm(h, w, b):
    centred = h - h.mean(-1, keepdim=True)
    return centred / torch.sqrt(h.var(-1, keepdim=True, unbiased=False) + 1e-5) * w + b


COMPOSITES = {
    "softsign": F.softsign,
    "tanhshrink": F.tanhshrink,
    "relu6-hardswish": lambda h: F.hardswish(F.relu6(3 * h)),
    "normalize": lambda h: F.normalize(h, dim=1),
    "cosine-similarity": lambda h: F.cosine_similarity(h, h.flip(0), dim=1).unsqueeze(1) * h,
    "pairwise-distance": lambda h: F.pairwise_distance(h, h.roll(1, 0)).unsqueeze(1) + h,
    "std-scaling": lambda h: h / h.std(0, keepdim=True),
    "logsumexp-pooling": lambda h: h - h.logsumexp(1, keepdim=True),
    "max-pooling-over-features": lambda h: h * h.amax(1, keepdim=True),
    "glu": lambda h: F.glu(torch.cat([h, h.flip(1)], 1), 1),
}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name", COMPOSITES)
def test_functions_in_a_network_match_oracle(name):
    from tests.engine_checks import check_graph

    torch.manual_seed(0)
    params = {"w0": r(4, 3), "b0": r(4), "g": torch.rand(4) + 0.5, "c": r(4) / 4,
              "w1": r(3, 4), "b1": r(3)}  # fmt: skip

    def loss_fn(p, x, y):
        h = F.linear(x, p["w0"], p["b0"])
        h = COMPOSITES[name](manual_layer_norm(h, p["g"], p["c"]))
        out = F.linear(h, p["w1"], p["b1"])
        return F.cross_entropy(out, y), (out,)

    check_graph(loss_fn, params, r(5, 3), torch.tensor([0, 2, 1, 1, 0]))
