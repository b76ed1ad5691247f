"""Rules for the nodes only CUDA / ROCm builds record (cuDNN / MIOpen batch norm, cuDNN's fused
RNN, the CUDA attention kernels), tested on the CPU: each rule is fed a stand-in node holding
exactly what such a node saves (the attribute names declared in the installed wheel's
Functions.h; the values computed with CPU kernels), and compared with the op-level oracle
(float64, dense per-operation Jacobians) applied to torch's own CPU computation."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hesscale.engine.call import NodeCall
from hesscale.engine.registry import RULES
from hesscale.internals import BATCH_NORM_EPSILON, CUDNN_RNN_MODES, GPU_NODE_SAVED
from tests.engine_fused import decomposition_diagonals
from tests.oracle import assert_close

HEADER = Path(torch.__file__).parent / "include/torch/csrc/autograd/generated/Functions.h"


def declared_attributes(node_name: str) -> set[str]:
    """The saved attributes the wheel's Functions.h declares for ``node_name`` (a saved tensor
    ``name_``, a saved tensor list ``std::vector<SavedVariable> name_``, or a plain value)."""
    text = HEADER.read_text()
    match = re.search(rf"struct TORCH_API {node_name} : public \w+ \{{(.*?)\n}};", text, re.S)
    assert match, f"{node_name} is not declared in {HEADER}"
    names = set()
    for line in match.group(1).splitlines():
        member = re.match(r"\s+(?:SavedVariable|std::vector<SavedVariable>) (\w+)_;", line)
        member = member or re.match(r"\s+[\w:<>, ]+? (\w+)(?: = [^;]+)?;$", line)
        if member:
            names.add(member.group(1))
    return names


needs_header = pytest.mark.skipif(not HEADER.exists(), reason="this wheel ships no C++ headers")


@needs_header
@pytest.mark.parametrize("node_name", sorted(GPU_NODE_SAVED))
def test_saved_names_are_declared_in_the_wheel(node_name):
    """Fails loudly when a torch release renames what a GPU-only node saves."""
    missing = set(GPU_NODE_SAVED[node_name]) - declared_attributes(node_name)
    assert not missing, f"{node_name} no longer saves {sorted(missing)}"


@needs_header
def test_batch_norm_epsilon_names_are_declared():
    for node_name, eps in BATCH_NORM_EPSILON.items():
        assert eps in declared_attributes(node_name), node_name


class StandIn:
    """A node of ``node_name`` as the engine sees it: ``name()`` and ``_saved_<name>`` for
    exactly the attributes the rule may read (those of internals.GPU_NODE_SAVED)."""

    def __init__(self, node_name: str, /, **saved) -> None:  # (a node may save 'self')
        unknown = set(saved) - set(GPU_NODE_SAVED[node_name])
        assert not unknown, f"not saved by {node_name}: {unknown}"
        self._name = node_name
        for key, value in saved.items():
            setattr(self, "_saved_" + key, value)

    def name(self) -> str:
        return self._name


def run_rule(node, inputs, needs, h_out, g_out, second_order):
    grad_in = tuple(
        torch.zeros_like(t) if t is not None and need else None
        for t, need in zip(inputs, needs, strict=True)
    )
    entry = RULES[node.name()]
    reason = entry.check(node) if entry.check else None
    assert reason is None, reason
    with torch.no_grad():
        return list(entry.rule(NodeCall(node, tuple(h_out), tuple(g_out), grad_in, second_order)))


def r(*shape, seed=None):
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64, generator=generator)


# --- batch norm: cuDNN and MIOpen -----------------------------------------------------------


@pytest.mark.parametrize("second_order", [True, False], ids=["hesscale", "gn"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("node_name", ["CudnnBatchNormBackward0", "MiopenBatchNormBackward0"])
def test_gpu_batch_norm_matches_definition(node_name, training, second_order):
    torch.manual_seed(0)
    x, weight, bias = r(3, 4, 2, 3) * 2 + 1, r(4), r(4)
    running_mean, running_var, eps = r(4), r(4).abs() + 0.5, 1e-5
    # what the kernel saves: the batch's mean and inverse standard deviation in train mode,
    # empty tensors in eval mode (cuDNN's own convention; torch's CPU kernel gives the values)
    _, mean, invstd = torch.native_batch_norm(
        x, weight, bias, running_mean.clone(), running_var.clone(), training, 0.1, eps
    )
    if not training:
        mean, invstd = x.new_empty(0), x.new_empty(0)
    node = StandIn(
        node_name, input=x, weight=weight, running_mean=running_mean, running_var=running_var,
        training=training, epsilon=eps, result1=mean, result2=invstd,
    )  # fmt: skip

    def definition(x, weight, bias):
        stats = (running_mean.clone(), running_var.clone())
        return F.batch_norm(x, *stats, weight, bias, training=training, eps=eps)

    h, g = r(*x.shape).abs(), r(*x.shape)
    got = run_rule(node, [x, weight, bias], [True] * 3, [h], [g], second_order)
    expected = decomposition_diagonals(definition, [x, weight, bias], [h], [g], second_order)
    for got_j, want in zip(got, expected, strict=True):
        assert_close(got_j, want)


def test_gpu_batch_norm_weight_only():
    """Only the weight and bias need diagonals (a frozen input)."""
    x, weight, bias = r(4, 3, 5), r(3), r(3)
    _, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.1, 1e-5)
    node = StandIn(
        "CudnnBatchNormBackward0", input=x, weight=weight, running_mean=None, running_var=None,
        training=True, epsilon=1e-5, result1=mean, result2=invstd,
    )  # fmt: skip
    h, g = r(*x.shape).abs(), r(*x.shape)
    got = run_rule(node, [x, weight, bias], [False, True, True], [h], [g], True)
    expected = decomposition_diagonals(
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        [x, weight, bias], [h], [g],
    )  # fmt: skip
    assert got[0] is None
    assert_close(got[1], expected[1])
    assert_close(got[2], expected[2])


# --- cuDNN's fused RNN ------------------------------------------------------------------------

MODULES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}
MODE_NUMBER = {name: number for number, name in CUDNN_RNN_MODES.items()}

# (id, mode, options, initial state given)
RNN_CASES = [
    ("lstm", "LSTM", {}, True),
    ("lstm-2-layers-bidirectional", "LSTM", {"num_layers": 2, "bidirectional": True}, True),
    ("lstm-batch-first-zero-state", "LSTM", {"batch_first": True}, False),
    ("lstm-projection", "LSTM", {"proj_size": 2, "num_layers": 2}, True),
    ("lstm-no-bias", "LSTM", {"bias": False}, True),
    ("gru", "GRU", {}, True),
    ("gru-2-layers-bidirectional-batch-first",
     "GRU", {"num_layers": 2, "bidirectional": True, "batch_first": True}, True),
    ("rnn-tanh-2-layers", "RNN_TANH", {"num_layers": 2}, True),
    ("rnn-relu-bidirectional", "RNN_RELU", {"nonlinearity": "relu", "bidirectional": True},
     False),
]  # fmt: skip


def cudnn_rnn_case(mode, options, initial_state, steps=3, batch=2, inputs=3, hidden=3):
    """A float64 CPU module and what cuDNN's node would save for its forward pass."""
    module = MODULES[mode](inputs, hidden, **options).double()
    layers = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
    batch_first = options.get("batch_first", False)
    x = r(batch, steps, inputs) if batch_first else r(steps, batch, inputs)
    out_size = options.get("proj_size") or hidden
    state = r if initial_state else lambda *shape: torch.zeros(*shape, dtype=torch.float64)
    hx = state(layers, batch, out_size)
    cx = state(layers, batch, hidden) if mode == "LSTM" else None
    weights = [w.detach() for w in module._flat_weights]
    with torch.no_grad():
        output = module(x, (hx, cx) if mode == "LSTM" else hx)[0]
    node = StandIn(
        "CudnnRnnBackward0", input=x, weight=tuple(weights),
        weight_stride0=len(weights) // layers, hx=hx, cx=cx, mode=MODE_NUMBER[mode],
        hidden_size=hidden, proj_size=options.get("proj_size", 0),
        num_layers=options.get("num_layers", 1), batch_first=batch_first, dropout=0.0,
        train=True, bidirectional=options.get("bidirectional", False), batch_sizes=(),
        result0=output,
    )  # fmt: skip
    names = [name for name, _ in module.named_parameters()]

    def definition(x, *rest):
        params = dict(zip(names, rest[: len(names)], strict=True))
        state = tuple(rest[len(names) :]) if mode == "LSTM" else rest[len(names)]
        out, last = torch.func.functional_call(module, params, (x, state))
        return (out, *last) if mode == "LSTM" else (out, last)

    return node, [x, *weights, hx, cx], definition


@pytest.mark.parametrize("second_order", [True, False], ids=["hesscale", "gn"])
@pytest.mark.parametrize(
    "mode, options, initial_state", [c[1:] for c in RNN_CASES], ids=[c[0] for c in RNN_CASES]
)
def test_cudnn_rnn_matches_definition(mode, options, initial_state, second_order):
    torch.manual_seed(1)
    node, inputs, definition = cudnn_rnn_case(mode, options, initial_state)
    present = [t for t in inputs if t is not None]
    outputs = definition(*present)
    h_out = [r(*o.shape, seed=10 + j).abs() for j, o in enumerate(outputs)]
    g_out = [r(*o.shape, seed=20 + j) for j, o in enumerate(outputs)]
    needs = [t is not None and (initial_state or j < len(inputs) - 2)
             for j, t in enumerate(inputs)]  # fmt: skip
    got = run_rule(node, inputs, needs, h_out, g_out, second_order)
    expected = iter(decomposition_diagonals(definition, present, h_out, g_out, second_order))
    for j, (t, got_j) in enumerate(zip(inputs, got, strict=True)):
        if t is None:
            assert got_j is None
            continue
        want = next(expected)
        if needs[j]:
            assert_close(got_j, want)
        else:
            assert got_j is None


def test_cudnn_rnn_only_some_outputs_used():
    """Only the last hidden state carries a diagonal (a classifier on h_n)."""
    node, inputs, definition = cudnn_rnn_case("GRU", {"num_layers": 2}, True)
    outputs = definition(*[t for t in inputs if t is not None])
    h_out = [torch.zeros_like(outputs[0]), r(*outputs[1].shape).abs()]
    g_out = [torch.zeros_like(outputs[0]), r(*outputs[1].shape)]
    got = run_rule(node, inputs, [t is not None for t in inputs],
                   [None, h_out[1]], [None, g_out[1]], True)  # fmt: skip
    present = [t for t in inputs if t is not None]
    expected = decomposition_diagonals(definition, present, h_out, g_out)
    for got_j, want in zip(got[:-1], expected, strict=True):
        assert_close(got_j, want)


@pytest.mark.parametrize(
    "saved, message",
    [({"batch_sizes": (3, 2)}, "packed sequences"), ({"dropout": 0.5}, "dropout")],
)
def test_cudnn_rnn_refuses_what_it_cannot_recover(saved, message):
    node, _, _ = cudnn_rnn_case("LSTM", {}, True)
    for key, value in saved.items():
        setattr(node, "_saved_" + key, value)
    assert message in RULES["CudnnRnnBackward0"].check(node)


# --- the CUDA attention kernels ---------------------------------------------------------------

ATTENTION_CASES = [
    # (node, the name of its log-sum-exp, query rows it pads the log-sum-exp to, trailing 1)
    ("ScaledDotProductFlashAttentionBackward0", "logsumexp", 1, False),
    ("ScaledDotProductEfficientAttentionBackward0", "log_sumexp", 32, False),
    ("ScaledDotProductCudnnAttentionBackward0", "logsumexp", 1, True),
]


@pytest.mark.parametrize("second_order", [True, False], ids=["hesscale", "gn"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_cuda_attention_rule_on_stand_in(case, causal, second_order):
    """Each CUDA kernel's layout of what it saves (log-sum-exp in float32, padded or with a
    trailing 1), fed to the shared rule, against the definition of attention."""
    node_name, lse_name, pad, trailing = case
    q, k, v = r(2, 2, 5, 4), r(2, 2, 5, 4), r(2, 2, 5, 3)
    scale = 1 / math.sqrt(4)
    scores = (q @ k.transpose(-1, -2)) * scale
    if causal:
        scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), -math.inf)
    lse = scores.logsumexp(-1)
    rows = math.ceil(5 / pad) * pad
    lse = F.pad(lse, (0, rows - 5), value=math.inf)
    if trailing:
        lse = lse.unsqueeze(-1)
    saved = {"query": q, "key": k, "value": v, lse_name: lse, "scale": None,
             "is_causal": causal, "dropout_p": 0.0}  # fmt: skip
    if "attn_bias" in GPU_NODE_SAVED[node_name]:
        saved["attn_bias"] = None
    node = StandIn(node_name, **saved)

    def definition(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    h, g = r(2, 2, 5, 3, seed=3).abs(), r(2, 2, 5, 3, seed=4)
    got = run_rule(node, [q, k, v], [True] * 3, [h], [g], second_order)
    expected = decomposition_diagonals(definition, [q, k, v], [h], [g], second_order)
    for got_j, want in zip(got, expected, strict=True):
        assert_close(got_j, want)


CASES: list = []  # every rule here is tested on stand-ins above
COVERED_ELSEWHERE = {
    "CudnnBatchNormBackward0": "test_engine_ops_gpu.py::test_gpu_batch_norm_matches_definition",
    "MiopenBatchNormBackward0": "test_engine_ops_gpu.py::test_gpu_batch_norm_matches_definition",
    "CudnnRnnBackward0": "test_engine_ops_gpu.py::test_cudnn_rnn_matches_definition",
    "CudnnGridSamplerBackward0": (
        "test_engine_ops_gpu.py::test_cudnn_grid_sampler_matches_definition"
    ),
}


# --- the engine run inside a rule, during autograd's backward pass --------------------------


class _TanhLayer(torch.autograd.Function):
    """tanh(x W^T + b) as one opaque node (a stand-in for a fused kernel)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w, b)
        return torch.tanh(F.linear(x, w, b))

    @staticmethod
    def backward(ctx, grad):
        x, w, b = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (x, w, b)]
            out = torch.tanh(F.linear(*leaves))
        return torch.autograd.grad(out, leaves, grad)


@pytest.mark.parametrize("gn", [False, True])
def test_decomposed_rule_runs_inside_the_backward_pass(gn):
    """A rule that runs the engine on a decomposition (as cuDNN's RNN rule does) gives, inside
    a whole network's backward pass, what the network written out in primitives gives."""
    import hesscale
    from hesscale.engine.decomposed import decomposition_diagonals as engine_decomposition

    name = "_TanhLayerBackward"
    RULES.pop(name, None)

    @hesscale.engine.register(name)
    def fused(call):
        x, w, b = call.node.saved_tensors
        needs = [call.needs(i) for i in range(3)]
        return engine_decomposition(
            lambda x, w, b: (torch.tanh(F.linear(x, w, b)),),
            [x, w, b], needs, call.h_out, call.g_out, call.second_order,
        )  # fmt: skip

    try:
        torch.manual_seed(0)
        x, y = r(5, 3), torch.randint(0, 2, (5,))
        w1, b1, w2 = (t.requires_grad_() for t in (r(4, 3), r(4), r(2, 4)))
        results = []
        for layer in (_TanhLayer.apply, lambda *a: torch.tanh(F.linear(*a))):
            loss = F.cross_entropy(layer(x, w1, b1) @ w2.t(), y)
            hesscale.backward(loss, gn=gn)
            attr = "hesscale_gn" if gn else "hesscale"
            results.append([getattr(p, attr).clone() for p in (w1, b1, w2)])
            for p in (w1, b1, w2):
                p.grad = None
        for fused_result, plain in zip(*results, strict=True):
            assert_close(fused_result, plain)
    finally:
        RULES.pop(name, None)


# --- grid sampling: cuDNN ----------------------------------------------------------------------


@pytest.mark.parametrize("second_order", [True, False], ids=["hesscale", "gn"])
def test_cudnn_grid_sampler_matches_definition(second_order):
    """cuDNN samples bilinearly with padding 'zeros' and align_corners=True only."""
    from tests.engine_oracle import op_definition
    from tests.test_engine_ops_sampling import grid_points, reference_grid_sample

    x, grid = r(2, 2, 3, 4, seed=0), grid_points(2, 3, 2, 2, seed=1)
    node = StandIn("CudnnGridSamplerBackward0", self=x, grid=grid)
    h, g = r(2, 2, 3, 2, seed=2).abs(), r(2, 2, 3, 2, seed=3)
    got = run_rule(node, [x, grid], [True, True], [h], [g], second_order)

    def definition(x, grid):
        return reference_grid_sample(x, grid, "bilinear", "zeros", True)

    for i in range(2):
        want = op_definition(definition, [x, grid], i, [h], [g] if second_order else None)
        assert_close(got[i], want)
