"""The fused LSTM layer against the definition applied to its unrolled cell equations, written
out here and evaluated by the graph oracle: the rule's formula in float64, and the node torch
records (float32 only: oneDNN has no float64 kernel) to float32 precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

from hesscale.engine.backward import node_diagonals
from hesscale.internals import saved_value
from hesscale.rules.recurrent import lstm_layer_diagonals
from tests.engine_checks import check_op
from tests.engine_fused import decomposition_diagonals
from tests.oracle import assert_close

FUSED_LSTM = "MkldnnRnnLayerBackward0"


def lstm_decomposition(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False):
    """One LSTM layer, unrolled: (hidden-state sequence, last h, last c)."""
    h, c, outputs = h0, c0, []
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    for t in steps:
        gates = x[t] @ w_ih.t() + h @ w_hh.t()
        if b_ih is not None:
            gates = gates + b_ih + b_hh
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    if reverse:
        outputs.reverse()
    return torch.stack(outputs), h, c


def layer_inputs(steps=4, batch=2, inputs=3, hidden=2, bias=True, dtype=torch.float64):
    def r(*shape):
        return torch.randn(*shape, dtype=dtype)

    tensors = [r(steps, batch, inputs), r(batch, hidden), r(batch, hidden),
               r(4 * hidden, inputs), r(4 * hidden, hidden)]  # fmt: skip
    return tensors + ([r(4 * hidden), r(4 * hidden)] if bias else [])


def random_like(tensors, seed, zero=()):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.zeros_like(t)
        if j in zero
        else torch.randn(t.shape, generator=generator, dtype=t.dtype)
        for j, t in enumerate(tensors)
    ]


# (id, shape options, reverse, outputs without a diagonal / gradient)
RULE_CASES = [
    ("forward", {}, False, ()),
    ("reverse", {}, True, ()),
    ("no-bias", {"bias": False}, False, ()),
    ("sequence-only", {}, True, (1, 2)),
    ("last-states-only", {"hidden": 3}, False, (0,)),
    ("one-step", {"steps": 1, "batch": 1}, False, ()),
]


@pytest.mark.parametrize("second_order", [True, False], ids=["hesscale", "gn"])
@pytest.mark.parametrize(
    "options, reverse, unused", [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES]
)
def test_lstm_layer_rule_matches_unrolled_cells(options, reverse, unused, second_order):
    torch.manual_seed(0)
    tensors = layer_inputs(**options)
    tensors[0] = tensors[0] * 2  # saturate some gates

    def decomposition(*ts):
        return lstm_decomposition(*ts, reverse=reverse)

    outputs = decomposition(*tensors)
    h_outs = random_like(outputs, 1, zero=unused)
    g_outs = random_like(outputs, 2, zero=unused)
    x, h0, c0, w_ih, w_hh, *biases = tensors
    got = lstm_layer_diagonals(
        x, h0, c0, w_ih, w_hh, *(biases or [None, None]), outputs[0],
        tuple(None if j in unused else h for j, h in enumerate(h_outs)),
        tuple(None if j in unused else g for j, g in enumerate(g_outs)) if second_order else None,
        reverse=reverse,
    )  # fmt: skip
    expected = decomposition_diagonals(decomposition, tensors, h_outs, g_outs, second_order)
    order = [0, 3, 4, 5, 6, 1, 2]  # the rule's order: x, W_ih, W_hh, b_ih, b_hh, h0, c0
    for j, got_j in zip(order, got, strict=True):
        if j < len(tensors):
            assert_close(got_j, expected[j])
        else:
            assert got_j is None


def fused_nodes(out):
    found, seen, stack = [], set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() == FUSED_LSTM:
            found.append(node)
        stack.extend(child for child, _ in node.next_functions)
    return found


@pytest.mark.parametrize("second_order", [True, False], ids=["hesscale", "gn"])
@pytest.mark.parametrize("initial_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-way", "bidirectional"])
def test_mkldnn_lstm_node_matches_unrolled_cells(bidirectional, initial_state, second_order):
    """The float32 node torch records, read through the engine's adaptor (saved names, time
    order of reversed layers, given or zero initial states), against the float64 definition:
    agreement to float32 precision (relative 1e-4 of the largest entry)."""
    torch.manual_seed(3)
    lstm = nn.LSTM(3, 2, bidirectional=bidirectional, batch_first=True)
    x = torch.randn(2, 5, 3, requires_grad=True)
    directions = 2 if bidirectional else 1
    h0 = torch.randn(directions, 2, 2, requires_grad=True)
    c0 = torch.randn(directions, 2, 2, requires_grad=True)
    out, _ = lstm(x, (h0, c0)) if initial_state else lstm(x)
    nodes = fused_nodes(out)
    assert len(nodes) == directions
    for node in nodes:
        reverse = saved_value(node, "reverse")
        suffix = "_reverse" if reverse else ""
        weights = [getattr(lstm, f"{name}_l0{suffix}") for name in
                   ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]  # fmt: skip
        d = int(reverse)
        start = [x.transpose(0, 1), h0[d], c0[d]] if initial_state else [
            x.transpose(0, 1), torch.zeros(2, 2), torch.zeros(2, 2)]  # fmt: skip
        tensors = [t.detach().double() for t in start + weights]

        def decomposition(*ts, reverse=reverse):
            return lstm_decomposition(*ts, reverse=reverse)

        outputs = decomposition(*tensors)
        h_outs, g_outs = random_like(outputs, 1), random_like(outputs, 2)
        got = node_diagonals(
            node, [h.float() for h in h_outs], [g.float() for g in g_outs], second_order
        )
        expected = decomposition_diagonals(decomposition, tensors, h_outs, g_outs, second_order)
        # the node's inputs: x, W_ih, W_hh, b_ih, b_hh, h0, c0
        for j, got_j in zip([0, 3, 4, 5, 6, 1, 2], got, strict=True):
            if j in (1, 2) and not initial_state:
                assert got_j is None
                continue
            want = expected[j].float()
            if j == 0:
                want = want.transpose(0, 1)  # the node's input is time-major
                got_j = got_j.transpose(0, 1)
            assert got_j.dtype == torch.float32
            torch.testing.assert_close(got_j, want, rtol=1e-4, atol=1e-4 * want.abs().max())


LENGTHS = torch.tensor([4, 2, 1])
CASES = [
    ("pack-padded-sequence", lambda x: pack_padded_sequence(x, LENGTHS).data,
     (torch.randn(4, 3, 2, dtype=torch.float64),), None),
]  # fmt: skip


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)


COVERED_ELSEWHERE = {
    FUSED_LSTM: "test_engine_ops_recurrent.py::test_mkldnn_lstm_node_matches_unrolled_cells "
    "(and test_lstm_layer_rule_matches_unrolled_cells, its formula in float64)",
}


def test_saved_names_the_rule_reads():
    """derivatives.yaml's names for what oneDNN's layer node saves: fails loudly when a torch
    release renames one (hesscale.internals.saved_value reads them)."""
    lstm = nn.LSTM(3, 2)
    x = torch.randn(4, 5, 3)
    out, _ = lstm(x)
    node = out.grad_fn
    assert node.name() == FUSED_LSTM
    assert torch.equal(saved_value(node, "input"), x)  # time-major
    assert torch.equal(saved_value(node, "weight0"), lstm.weight_ih_l0)
    assert torch.equal(saved_value(node, "weight1"), lstm.weight_hh_l0)
    assert torch.equal(saved_value(node, "weight2"), lstm.bias_ih_l0)
    assert torch.equal(saved_value(node, "weight3"), lstm.bias_hh_l0)
    assert torch.equal(saved_value(node, "result0"), out)
    assert not saved_value(node, "hx_").any()  # zero initial states
    assert not saved_value(node, "cx_").any()
    assert saved_value(node, "reverse") is False
    assert saved_value(node, "has_biases") is True
    assert saved_value(node, "mode") == 2
    assert saved_value(node, "batch_sizes") == ()
