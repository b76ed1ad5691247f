"""Transformers and recurrent language models through hesscale.backward, against the graph
oracle (the definition evaluated operation by operation on torch's decomposition of the fused
attention and recurrent kernels), on tiny float64 shapes. Where the engine meets the fused LSTM
kernel only in float32 (oneDNN has no float64 kernel), float32 is compared with the float64
definition to float32 precision."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import hesscale
from hesscale.internals import saved_value
from tests.engine_checks import check_graph, node_names
from tests.engine_fused import decomposition_diagonals
from tests.engine_oracle import GraphOracle
from tests.oracle import assert_close
from tests.sequence_models import RecurrentLM, gpt, lm_loss

pytestmark = pytest.mark.usefixtures("float64")

VOCAB = 7


def module_loss(model, loss_of=lm_loss):
    """loss_fn(params, inputs, targets) for check_graph: functional_call of ``model``."""

    def loss_fn(params, inputs, targets):
        logits = functional_call(model, params, (inputs,))
        return loss_of(logits, targets), (logits,)

    return loss_fn


def parameters(model):
    return {n: p.detach() for n, p in model.named_parameters()}


def tokens(*shape):
    return torch.randint(0, VOCAB, shape)


# GPT --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "one_hot, layer_norm",
    [
        pytest.param(False, True, id="gpt"),
        pytest.param(True, False, id="gpt-one-hot-no-norm"),
        pytest.param(True, True, id="gpt-one-hot"),
    ],
)
def test_gpt_matches_oracle(one_hot, layer_norm):
    torch.manual_seed(0)
    model = gpt(VOCAB, block_size=4, dim=4, heads=2, layers=2, one_hot=one_hot,
                layer_norm=layer_norm)  # fmt: skip
    assert not any(
        p.shape == (VOCAB, 4) and n != "tokens.weight" for n, p in model.named_parameters()
    )
    check_graph(module_loss(model), parameters(model), tokens(2, 4), tokens(2, 4))


def test_gpt_records_fused_attention():
    model = gpt(VOCAB, block_size=4, dim=4, heads=2, layers=1)
    names = node_names(lambda: lm_loss(model(tokens(2, 4)), tokens(2, 4)))
    assert "ScaledDotProductFlashAttentionForCpuBackward0" in names


# nn.TransformerEncoderLayer and nn.MultiheadAttention ---------------------------------------


class EncoderClassifier(nn.Module):
    def __init__(self, batch_first: bool, norm_first: bool, activation="relu") -> None:
        super().__init__()
        self.batch_first = batch_first
        self.layer = nn.TransformerEncoderLayer(
            4, 2, 6, dropout=0.0, batch_first=batch_first, norm_first=norm_first,
            activation=activation,
        )  # fmt: skip
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1 if self.batch_first else 0])
        return self.head(self.layer(x, src_mask=mask, is_causal=True))


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-first", "batch-first"])
def test_transformer_encoder_layer_matches_oracle(batch_first, norm_first):
    torch.manual_seed(0)
    model = EncoderClassifier(batch_first, norm_first, "gelu" if norm_first else "relu")
    x = torch.randn(2, 3, 4)
    check_graph(module_loss(model), parameters(model), x, torch.randint(0, 3, (2, 3)))


class AttentionClassifier(nn.Module):
    def __init__(self, batch_first: bool, need_weights: bool, kdim=None, vdim=None) -> None:
        super().__init__()
        self.need_weights = need_weights
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(4, 2, batch_first=batch_first, kdim=kdim, vdim=vdim)
        self.head = nn.Linear(4, 3)

    def forward(self, x, key_padding_mask=None, attn_mask=None):
        out, weights = self.attn(
            x, x if self.attn.kdim == 4 else x[..., :3], x if self.attn.vdim == 4 else x[..., :2],
            need_weights=self.need_weights, key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
        )  # fmt: skip
        logits = self.head(out)
        return logits if weights is None else logits + weights.sum()


PADDING = torch.tensor([[False, False, True], [False, False, False]])
CAUSAL = torch.ones(3, 3, dtype=torch.bool).triu(1)  # True: not allowed


@pytest.mark.parametrize(
    "options, masks",
    [
        ({"batch_first": True, "need_weights": False}, {}),
        ({"batch_first": False, "need_weights": False}, {"attn_mask": CAUSAL}),
        ({"batch_first": True, "need_weights": False}, {"key_padding_mask": PADDING}),
        ({"batch_first": True, "need_weights": True}, {"key_padding_mask": PADDING}),
        ({"batch_first": False, "need_weights": True}, {"attn_mask": CAUSAL}),
        ({"batch_first": True, "need_weights": False, "kdim": 3, "vdim": 2}, {}),
    ],
    ids=["sdpa", "sdpa-causal", "sdpa-padding", "weights-padding", "weights-causal", "kdim-vdim"],
)
def test_multihead_attention_matches_oracle(options, masks):
    torch.manual_seed(0)
    model = AttentionClassifier(**options)
    x = torch.randn(2, 3, 4) if options["batch_first"] else torch.randn(3, 2, 4)

    def loss_fn(params, x, targets):
        logits = functional_call(model, params, (x,), masks)
        return lm_loss(logits, targets), (logits,)

    check_graph(loss_fn, parameters(model), x, torch.randint(0, 3, x.shape[:2]))


# recurrent language models ----------------------------------------------------------------

RNN_CASES = [
    ("lstm", {}),
    ("lstm", {"bidirectional": True, "batch_first": False}),
    ("lstm", {"proj_size": 2}),
    ("gru", {}),
    ("gru", {"bidirectional": True, "batch_first": False}),
    ("rnn", {"nonlinearity": "tanh", "batch_first": False}),
    ("rnn", {"nonlinearity": "relu", "bias": False}),
]


def rnn_id(case):
    kind, options = case
    return "-".join([kind, *(f"{k}={v}" for k, v in options.items())])


@pytest.mark.parametrize("one_hot", [pytest.param(False), True],
                         ids=["embedding", "one-hot"])  # fmt: skip
@pytest.mark.parametrize("kind, options", RNN_CASES, ids=[rnn_id(c) for c in RNN_CASES])
def test_recurrent_lm_matches_oracle(kind, options, one_hot):
    """float64: every recurrent layer is recorded as primitive operations."""
    torch.manual_seed(0)
    options = dict(options)
    batch_first = options.pop("batch_first", True)
    model = RecurrentLM(kind, VOCAB, 3, 3, layers=2, batch_first=batch_first, one_hot=one_hot,
                        **options)  # fmt: skip
    shape = (2, 4) if batch_first else (4, 2)
    check_graph(module_loss(model), parameters(model), tokens(*shape), tokens(*shape))


def float32_against_float64_definition(model, inputs, targets, rtol):
    """hesscale.backward on the float32 model against the definition evaluated in float64 on
    the same weights: |difference| <= rtol * (|expected| + max |expected| of that tensor)."""
    model64 = copy.deepcopy(model).double()
    model32 = model.float()
    hesscale.backward(lm_loss(model32(inputs), targets), gn="both")
    names = [n for n, _ in model64.named_parameters()]

    def fn(*tensors):
        values = dict(zip(names, tensors[: len(names)], strict=True))
        logits = functional_call(model64, values, (tensors[-2],))
        return lm_loss(logits, tensors[-1]), logits

    oracle = GraphOracle(fn, [p.detach() for p in model64.parameters()] + [inputs, targets])
    for variant in ("hesscale", "hesscale_gn"):
        expected, _ = oracle.diagonals(gn=variant == "hesscale_gn")
        for name, p, want in zip(names, model32.parameters(), expected, strict=False):
            got = getattr(p, variant)
            assert got.dtype == torch.float32
            torch.testing.assert_close(
                got.double(), want, rtol=rtol, atol=rtol * float(want.abs().max()),
                msg=lambda m, n=name, v=variant: f"{v} {n}: {m}",
            )  # fmt: skip


LSTM32_CASES = [
    {},
    {"bidirectional": True},
    {"batch_first": False},
    {"eval": True},
]


@pytest.mark.parametrize(
    "options", LSTM32_CASES, ids=["plain", "bidirectional", "time-first", "eval-mode"]
)
def test_float32_lstm_lm_fused_kernel(options):
    """In float32 nn.LSTM records oneDNN's fused layer (one per layer and direction); its rule
    agrees with the float64 definition to float32 precision (1e-4 relative)."""
    torch.manual_seed(0)
    options = dict(options)
    batch_first = options.pop("batch_first", True)
    evaluating = options.pop("eval", False)
    model = RecurrentLM("lstm", VOCAB, 3, 3, layers=2, batch_first=batch_first, one_hot=True,
                        **options)  # fmt: skip
    model.train(not evaluating)
    shape = (2, 5) if batch_first else (5, 2)
    inputs, targets = tokens(*shape), tokens(*shape)
    names = node_names(lambda: lm_loss(model.float()(inputs), targets))
    assert "MkldnnRnnLayerBackward0" in names
    float32_against_float64_definition(model, inputs, targets, rtol=1e-4)


def test_packed_sequence_lstm_is_the_sum_over_its_sequences():
    """Packed variable-length sequences (the oracle cannot trace the packing, whose shapes
    depend on the lengths). Every operation acts on each sequence separately and the weights
    sum over them, so the definition on the packed graph is the sum of the definitions for each
    sequence run alone at its length (oracle), with the loss's mean over all positions."""
    torch.manual_seed(0)
    lstm, head = nn.LSTM(3, 3, 2), nn.Linear(3, VOCAB)
    model = nn.ModuleDict({"lstm": lstm, "head": head})
    lengths = [4, 2, 1]
    x, targets = torch.randn(4, 3, 3), tokens(4, 3)
    out, _ = lstm(pack_padded_sequence(x.requires_grad_(), torch.tensor(lengths)))
    packed_targets = pack_padded_sequence(targets, torch.tensor(lengths)).data
    loss = lm_loss(head(out.data), packed_targets)
    assert "PackPaddedSequenceBackward0" in node_names(lambda: loss)
    hesscale.backward(loss, gn="both")

    names = [n for n, _ in model.named_parameters()]
    total = sum(lengths)
    expected = {"hesscale": 0, "hesscale_gn": 0}
    for b, length in enumerate(lengths):

        def fn(*tensors, b=b, length=length):
            values = dict(zip(names, tensors[:-1], strict=True))
            out, _ = functional_call(lstm, {k[5:]: v for k, v in values.items() if
                                            k.startswith("lstm.")}, (tensors[-1],))  # fmt: skip
            logits = functional_call(head, {k[5:]: v for k, v in values.items() if
                                            k.startswith("head.")}, (out[:, 0],))  # fmt: skip
            loss = F.cross_entropy(logits, targets[:length, b], reduction="sum") / total
            return loss, logits

        params = [p.detach() for p in model.parameters()]
        oracle = GraphOracle(fn, params + [x[:length, b : b + 1].detach()])
        for variant in expected:
            diagonals, _ = oracle.diagonals(gn=variant == "hesscale_gn")
            expected[variant] = [
                d + e for d, e in zip(diagonals[:-1], expected[variant] or [0] * len(names),
                                      strict=True)
            ]  # fmt: skip
    for variant, diagonals in expected.items():
        for p, want in zip(model.parameters(), diagonals, strict=True):
            assert_close(getattr(p, variant), want)


class Cells(nn.Module):
    """LSTMCell, GRUCell and RNNCell unrolled by hand over the time steps."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTMCell(3, 3)
        self.gru = nn.GRUCell(3, 3)
        self.rnn = nn.RNNCell(3, 3, nonlinearity="relu")
        self.head = nn.Linear(3, VOCAB)

    def forward(self, x):
        h = c = torch.zeros(x.shape[1], 3)
        g = r = None
        outputs = []
        for x_t in x:
            h, c = self.lstm(x_t, (h, c))
            g = self.gru(h, g)
            r = self.rnn(g, r)
            outputs.append(r)
        return self.head(torch.stack(outputs))


def test_recurrent_cells_match_oracle():
    torch.manual_seed(0)
    model = Cells()
    check_graph(module_loss(model), parameters(model), torch.randn(3, 2, 3), tokens(3, 2))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_lm_head_is_exact(kind):
    """The last layer's HesScale diagonal is the exact Hessian diagonal."""
    torch.manual_seed(0)
    model = RecurrentLM(kind, VOCAB, 3, 3, one_hot=True)
    inputs, targets = tokens(2, 4), tokens(2, 4)
    hesscale.backward(lm_loss(model(inputs), targets))
    params = parameters(model)
    for name in ("head.weight", "head.bias"):

        def loss_of(p, name=name):
            return lm_loss(functional_call(model, {**params, name: p}, (inputs,)), targets)

        p = params[name]
        exact = torch.autograd.functional.hessian(loss_of, p).reshape(p.numel(), p.numel())
        got = model.get_parameter(name).hesscale
        torch.testing.assert_close(got, exact.diagonal().reshape(p.shape), rtol=1e-10, atol=1e-13)


def test_attention_dropout_records_its_decomposition():
    """dropout_p > 0 makes torch take its math path, which records the dropout as a product
    with the scaled random mask: the definition of that decomposition, with the mask drawn."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 3, 4, requires_grad=True) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.4, is_causal=True)
    noise = next(
        saved_value(node, "other")
        for node in graph_nodes(out)
        if node.name() == "MulBackward0" and saved_value(node, "other").shape == (2, 2, 3, 3)
    )
    assert set(noise.unique().tolist()) <= {0.0, 1 / 0.6}
    h, g = torch.randn_like(out), torch.randn_like(out)
    value = out.detach()
    loss = (g * out).sum() + 0.5 * (h * (out - value).square()).sum()
    hesscale.backward(loss)

    def decomposition(q, k, v):
        scores = (q @ k.transpose(-2, -1)) / 2  # scale 1 / sqrt(4)
        scores = scores.masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), -torch.inf)
        return (torch.softmax(scores, -1) * noise) @ v

    expected = decomposition_diagonals(decomposition, [q, k, v], [h], [g])
    for x, want in zip((q, k, v), expected, strict=True):
        assert_close(x.hesscale, want)


def graph_nodes(out):
    seen, stack = [], [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.append(node)
            stack.extend(child for child, _ in node.next_functions)
    return seen


@pytest.mark.parametrize(
    "model_name, dtype",
    [("gpt", torch.bfloat16), ("gpt", torch.float16), ("lstm", torch.bfloat16)],
    ids=["gpt-bfloat16", "gpt-float16", "lstm-bfloat16"],
)
def test_half_precision_models_follow_float32(model_name, dtype):
    """Half precision runs the same fused kernels where the CPU has them (float16 LSTMs, and
    bfloat16 LSTMs on CPUs without native bfloat16 support, decompose instead); the rules follow
    rules.precision (float16 computes in float32): results in the parameter's dtype, within half
    precision of the float32 results (5% of the largest entry)."""
    torch.manual_seed(0)
    if model_name == "gpt":
        model = gpt(VOCAB, block_size=6, dim=8, heads=2, layers=2, one_hot=True, layer_norm=False)
        fused = "ScaledDotProductFlashAttentionForCpuBackward0"
    else:
        model = RecurrentLM("lstm", VOCAB, 8, 8, one_hot=True)
        fused = "MkldnnRnnLayerBackward0"
    inputs, targets = tokens(3, 6), tokens(3, 6)
    results = {}
    for precision in (torch.float32, dtype):
        copy_ = copy.deepcopy(model).to(precision)
        recorded = node_names(lambda c=copy_: lm_loss(c(inputs), targets))
        if precision == torch.float32 or model_name == "gpt":
            assert fused in recorded
        else:  # oneDNN's bfloat16 LSTM needs CPU support; the decomposition runs elsewhere
            assert fused in recorded or "MulBackward0" in recorded
        hesscale.backward(lm_loss(copy_(inputs), targets))
        results[precision] = {n: p.hesscale for n, p in copy_.named_parameters()}
    for name, want in results[torch.float32].items():
        got = results[dtype][name]
        assert got.dtype == dtype
        torch.testing.assert_close(
            got.float(), want, rtol=0.1, atol=0.05 * float(want.abs().max()), msg=name
        )


@pytest.mark.slow
def test_sequence_benchmark_runs():
    """benchmarks/sequence_models.py still runs (one round; nothing timed is asserted)."""
    from benchmarks.sequence_models import measure

    results = measure("lstm-lite", repeats=1, warmup=1)
    assert set(results) == {"forward+backward", "hesscale", "hesscale_gn"}
    assert all(ms > 0 and mb > 0 for ms, mb in results.values())
