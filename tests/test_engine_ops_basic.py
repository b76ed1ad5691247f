"""Per-operation rules of the engine (arithmetic, matrix products, shapes, activations, losses)
against the definition computed by brute force for that one operation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.engine_checks import check_op


def r(*shape, low=None):
    """Random float64 values; ``low`` keeps them above a bound (e.g. for log, sqrt)."""
    t = torch.randn(*shape, dtype=torch.float64)
    return t if low is None else t.abs() + low


def classes(n, c):
    return torch.randint(0, c, (n,))


aten = torch.ops.aten
MASK = torch.rand(3, 4) > 0.5
WEIGHT = torch.rand(4, dtype=torch.float64)
POS_WEIGHT = torch.rand(4, dtype=torch.float64) + 0.5

# (id, fn, inputs, grad): fn(*inputs) records one node; grad says which inputs require grad
CASES = [
    # arithmetic, with broadcasting
    ("add", lambda x, y: x + y, (r(3, 4), r(3, 4)), None),
    ("add-broadcast-alpha", lambda x, y: torch.add(x, y, alpha=-2.5), (r(3, 4), r(4)), None),
    ("add-scalar", lambda x: x + 2, (r(3, 4),), None),
    ("add-scalar-aten", lambda x: aten.add.Scalar(x, 2.0), (r(3, 4),), None),
    ("sub-scalar-aten", lambda x: aten.sub.Scalar(x, 2.0, alpha=3), (r(3, 4),), None),
    ("mul-scalar-aten", lambda x: aten.mul.Scalar(x, -2.5), (r(3, 4),), None),
    ("div-scalar-aten", lambda x: aten.div.Scalar(x, -2.5), (r(3, 4),), None),
    ("sub", lambda x, y: x - y, (r(2, 3), r(2, 1)), None),
    ("sub-scalar", lambda x: x - 2, (r(3),), None),
    ("rsub", lambda x, y: torch.rsub(x, y, alpha=3), (r(3), r(3)), None),
    ("rsub-scalar", lambda x: 2 - x, (r(3),), None),
    ("neg", lambda x: -x, (r(3),), None),
    ("mul", lambda x, y: x * y, (r(3, 4), r(1, 4)), None),
    ("mul-one-grad", lambda x, y: x * y, (r(3, 4), r(3, 4)), (True, False)),
    ("mul-scalar", lambda x: x * 3.5, (r(3, 2),), None),
    ("div", lambda x, y: x / y, (r(3, 4), r(4, low=0.5)), None),
    ("div-denominator-only", lambda x, y: x / y, (r(3, 4), r(3, 4, low=0.5)), (False, True)),
    ("div-scalar", lambda x: x / 3, (r(3),), None),
    ("pow", lambda x: x**3, (r(3, 4),), None),
    ("pow-fractional", lambda x: x**2.5, (r(3, 4, low=0.5),), None),
    ("pow-negative", lambda x: x**-1.5, (r(3, 4, low=0.5),), None),
    ("square", lambda x: x.square(), (r(5),), None),
    ("exp", torch.exp, (r(3, 4),), None),
    ("log", torch.log, (r(3, 4, low=0.2),), None),
    ("sqrt", torch.sqrt, (r(3, 4, low=0.2),), None),
    ("rsqrt", torch.rsqrt, (r(3, 4, low=0.2),), None),
    ("reciprocal", torch.reciprocal, (r(3, 4, low=0.2),), None),
    ("abs", torch.abs, (r(3, 4),), None),
    ("clamp", lambda x: x.clamp(-0.5, 0.5), (r(4, 5),), None),
    ("clamp-min", lambda x: x.clamp(min=0.1), (r(4, 5),), None),
    ("clamp-max", lambda x: x.clamp(max=0.1), (r(4, 5),), None),
    ("clamp-min-fn", lambda x: torch.clamp_min(x, 0.1), (r(4, 5),), None),
    ("clamp-max-fn", lambda x: torch.clamp_max(x, 0.1), (r(4, 5),), None),
    ("clamp-tensor", lambda x, lo: x.clamp(min=lo), (r(4, 5), r(5)), None),
    ("mean", lambda x: x.mean(), (r(3, 4),), None),
    ("mean-dims", lambda x: x.mean((0, 2), keepdim=True), (r(2, 3, 4),), None),
    ("sum", lambda x: x.sum(), (r(3, 4),), None),
    ("sum-dim", lambda x: x.sum(1), (r(3, 4),), None),
    ("where", lambda x, y: torch.where(x > 0, x, y), (r(3, 4), r(4)), None),
    ("masked-fill", lambda x: x.masked_fill(x > 0.3, -1.0), (r(3, 4),), None),
    ("masked-fill-tensor", lambda x, v: x.masked_fill(x > 0.3, v), (r(3, 4), r(())), None),
    # matrix products
    ("mm", lambda a, b: a @ b, (r(3, 4), r(4, 5)), None),
    ("addmm", lambda m, a, b: torch.addmm(m, a, b), (r(5), r(3, 4), r(4, 5)), None),
    ("addmm-alpha-beta", lambda m, a, b: torch.addmm(m, a, b, beta=0.5, alpha=-2.0),
     (r(3, 5), r(3, 4), r(4, 5)), None),
    ("bmm", torch.bmm, (r(2, 3, 4), r(2, 4, 5)), None),
    ("baddbmm", lambda m, a, b: torch.baddbmm(m, a, b, beta=2.0, alpha=0.5),
     (r(2, 3, 5), r(2, 3, 4), r(2, 4, 5)), None),
    ("mv", torch.mv, (r(3, 4), r(4)), None),
    ("dot", torch.dot, (r(4), r(4)), None),
    # shapes and selections
    ("view", lambda x: x.view(4, 3), (r(3, 4),), None),
    ("unsafe-view", lambda x: aten._unsafe_view(x, [12]), (r(3, 4),), None),
    ("reshape-alias", lambda x: aten._reshape_alias(x, [12], [1]), (r(3, 4),), None),
    ("alias", lambda x: aten.alias(x), (r(3, 4),), None),
    ("as-strided-overlapping", lambda x: x.as_strided((3, 3), (1, 1)), (r(6),), None),
    ("unfold-im2col", lambda x: F.unfold(x, 2, padding=1, stride=2), (r(1, 2, 3, 4),), None),
    ("fold-col2im", lambda x: F.fold(x, (3, 4), 2), (r(1, 4, 6),), None),
    ("diag-embed", lambda x: torch.diag_embed(x, 1), (r(2, 3),), None),
    ("rot90", lambda x: torch.rot90(x, 1, (0, 1)), (r(2, 3),), None),
    ("trilinear-bilinear-layer", lambda a, w, b: torch._trilinear(
        a, w, b, [1, 3], [0], [1, 2], [2, 3]), (r(5, 3), r(2, 3, 4), r(5, 4)), None),
    ("trilinear-bilinear-weight-only", lambda a, w, b: torch._trilinear(
        a, w, b, [1, 3], [0], [1, 2], [2, 3]), (r(5, 3), r(2, 3, 4), r(5, 4)),
     (False, True, False)),
    ("squeeze-dims", lambda x: x.squeeze((0, 2)), (r(1, 3, 1),), None),
    ("masked-select", lambda x: x.masked_select(MASK), (r(3, 4),), None),
    ("take", lambda x: x.take(torch.tensor([0, 5, 5])), (r(3, 4),), None),
    ("unsafe-split", lambda x: x.unsafe_split(2, 1), (r(2, 5),), None),
    ("unsafe-split-sizes", lambda x: x.unsafe_split_with_sizes([1, 4], 1), (r(2, 5),), None),
    ("t", lambda x: x.t(), (r(3, 4),), None),
    ("transpose", lambda x: x.transpose(0, 2), (r(2, 3, 4),), None),
    ("permute", lambda x: x.permute(2, 0, 1), (r(2, 3, 4),), None),
    ("unsqueeze", lambda x: x.unsqueeze(1), (r(2, 3),), None),
    ("squeeze", lambda x: x.squeeze(1), (r(2, 1, 3),), None),
    ("squeeze-all", lambda x: x.squeeze(), (r(2, 1, 3),), None),
    ("expand", lambda x: x.expand(3, 2, 4), (r(2, 4),), None),
    ("clone", lambda x: x.clone(), (r(2, 3),), None),
    ("select", lambda x: x[1], (r(3, 4),), None),
    ("slice-step", lambda x: x[:, 1::2], (r(3, 5),), None),
    ("index-repeated", lambda x: x[torch.tensor([0, 2, 0])], (r(3, 4),), None),
    ("index-select", lambda x: x.index_select(1, torch.tensor([3, 0, 3])), (r(2, 4),), None),
    ("gather", lambda x: x.gather(1, torch.tensor([[0, 0], [1, 2]])), (r(2, 3),), None),
    ("cat", lambda x, y: torch.cat([x, y], 1), (r(2, 3), r(2, 2)), None),
    ("stack", lambda x, y: torch.stack([x, y], 0), (r(2, 3), r(2, 3)), None),
    ("split", lambda x: x.split(2, 1), (r(2, 5),), None),
    ("split-sizes", lambda x: x.split([1, 4], 1), (r(2, 5),), None),
    ("unbind", lambda x: x.unbind(1), (r(2, 3),), None),
    ("pad", lambda x: F.pad(x, (1, 2)), (r(2, 3),), None),
    ("repeat", lambda x: x.repeat(2, 3), (r(2, 3),), None),
    ("flip", lambda x: x.flip(1), (r(2, 3),), None),
    ("roll", lambda x: x.roll(1, 0), (r(3, 2),), None),
    ("tril", lambda x: x.tril(), (r(3, 3),), None),
    ("triu", lambda x: x.triu(1), (r(3, 3),), None),
    ("diagonal", lambda x: x.diagonal(), (r(3, 3),), None),
    ("unfold", lambda x: x.unfold(1, 3, 1), (r(2, 5),), None),
    # activations
    ("relu", torch.relu, (r(3, 4),), None),
    ("tanh", torch.tanh, (r(3, 4),), None),
    ("sigmoid", torch.sigmoid, (r(3, 4),), None),
    ("leaky-relu", lambda x: F.leaky_relu(x, 0.1), (r(3, 4),), None),
    ("elu", lambda x: F.elu(x, 0.7), (r(3, 4),), None),
    ("selu", F.selu, (r(3, 4),), None),
    ("celu", lambda x: F.celu(x, 0.5), (r(3, 4),), None),
    ("softplus", lambda x: F.softplus(x, beta=2.0, threshold=1.5), (r(3, 4),), None),
    ("logsigmoid", F.logsigmoid, (r(3, 4),), None),
    ("silu", F.silu, (r(3, 4),), None),
    ("gelu", F.gelu, (r(3, 4),), None),
    ("gelu-tanh", lambda x: F.gelu(x, approximate="tanh"), (r(3, 4),), None),
    ("mish", F.mish, (r(3, 4),), None),
    ("hardtanh", lambda x: F.hardtanh(x, -0.5, 0.7), (r(3, 4),), None),
    ("softmax", lambda x: x.softmax(1), (r(3, 4),), None),
    ("softmax-dim0", lambda x: x.softmax(0), (r(3, 4),), None),
    ("log-softmax", lambda x: x.log_softmax(-1), (r(2, 3, 4),), None),
    # loss kernels
    ("nll", lambda x: F.nll_loss(x, torch.tensor([0, 2, 1])), (r(3, 4),), None),
    ("nll-weighted-sum", lambda x: F.nll_loss(x, torch.tensor([0, 2, 2]),
     weight=torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64), reduction="sum"),
     (r(3, 4),), None),
    ("nll-2d", lambda x: F.nll_loss(x, torch.tensor([[[0, 2], [1, 1]]])), (r(1, 3, 2, 2),), None),
    ("nll-none-ignore", lambda x: F.nll_loss(x, torch.tensor([0, -100, 1]), reduction="none"),
     (r(3, 4),), None),
    ("mse", lambda x, y: F.mse_loss(x, y), (r(3, 4), r(3, 4)), None),
    ("mse-sum", lambda x, y: F.mse_loss(x, y, reduction="sum"), (r(3, 4), r(3, 4)), None),
    ("mse-none", lambda x, y: F.mse_loss(x, y, reduction="none"), (r(3, 4), r(3, 4)), None),
    ("bce-logits", lambda x, y: F.binary_cross_entropy_with_logits(x, y),
     (r(3, 4), torch.rand(3, 4, dtype=torch.float64)), None),
    ("bce-logits-weights", lambda x, y: F.binary_cross_entropy_with_logits(
        x, y, weight=WEIGHT, pos_weight=POS_WEIGHT, reduction="sum"),
     (r(3, 4), torch.rand(3, 4, dtype=torch.float64)), None),
    ("bce-logits-none", lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none"),
     (r(3, 4), torch.rand(3, 4, dtype=torch.float64)), None),
]  # fmt: skip


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)


# nodes that no single operation on leaves records, and the test that checks each
COVERED_ELSEWHERE = {
    "AsStridedBackward1": (
        "test_engine_reliability_round2.py::test_adaptive_pooling_over_tokens_of_a_transposed_tensor"
    ),
    "_DDPSinkBackward": (
        "test_distributed.py::test_under_ddp[_no_sync_accumulates_and_unused_parameters]"
    ),
    "BackwardHookFunctionBackward": (
        "test_engine_vs_backpack.py::test_engine_on_an_extended_model_ignores_backpacks_hook_nodes"
    ),
    "ToCopyBackward0": "test_engine_graphs.py::test_dtype_change_keeps_the_diagonal_wide",
    # complex tensors, against the same computation with real tensors only
    "ViewAsComplexBackward0": "test_engine_complex.py::test_complex_graph_equals_its_real_form",
    "ViewAsRealBackward0": "test_engine_complex.py::test_complex_graph_equals_its_real_form",
    "EluBackward1": "test_engine_graphs.py::test_graph_matches_oracle[in-place]",
    "LeakyReluBackward1": "test_engine_graphs.py::test_graph_matches_oracle[in-place]",
    "TransposeBackward1": "test_engine_graphs.py::test_graph_matches_oracle[in-place]",
    "UnsqueezeBackward1": "test_engine_graphs.py::test_graph_matches_oracle[in-place]",
}
