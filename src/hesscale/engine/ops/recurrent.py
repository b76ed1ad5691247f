"""Recurrent layers (formulas: rules.recurrent).

On the CPU, nn.LSTM in float32 / bfloat16 records one fused ``MkldnnRnnLayerBackward0`` per
layer and direction; its rule equals the definition applied to the unrolled cell equations.
Everything else recurrent (nn.LSTM in float64 or with proj_size, nn.GRU, nn.RNN and the *Cell
modules) records primitive operations (addmm, sigmoid, tanh, mul, unsafe_split, unbind, stack,
...), which have their own rules; packed sequences add ``PackPaddedSequenceBackward0``.
On CUDA, cuDNN runs a whole stack of layers as one ``CudnnRnnBackward0`` node, whose rule runs
the engine over the same cell equations (hesscale.engine.decomposed).
"""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.decomposed import decomposition_diagonals
from hesscale.engine.ops.shape import zero_one_jacobian
from hesscale.engine.registry import register
from hesscale.internals import CUDNN_RNN_MODES, saved_value
from hesscale.rules import recurrent
from hesscale.rules.precision import working_dtype

MKLDNN_LSTM_MODE = 2  # oneDNN's mode numbers: 0 RNN_RELU, 1 RNN_TANH, 2 LSTM, 3 GRU


def _check_mkldnn_layer(node) -> str | None:
    if saved_value(node, "mode") != MKLDNN_LSTM_MODE:
        return f"oneDNN recurrent mode {saved_value(node, 'mode')} (only the LSTM, mode 2)"
    if saved_value(node, "batch_sizes"):
        return "packed sequences in oneDNN's fused layer"
    return None


@register("MkldnnRnnLayerBackward0", check=_check_mkldnn_layer)
def mkldnn_lstm_layer(call: NodeCall):
    """One LSTM layer and direction (inputs: x, W_ih, W_hh, b_ih, b_hh, h_0, c_0; outputs: the
    hidden-state sequence, the last h, the last c), defined as its unrolled cell equations."""
    h_outs = call.h_out
    g_outs = call.g_out if call.second_order else None
    if all(h is None for h in h_outs) and (g_outs is None or all(g is None for g in g_outs)):
        return (None,) * len(call.grad_in)
    x = call.saved("input")
    # rules.precision's policy: the operands' common dtype, float16 as float32
    dtype = working_dtype(x.dtype, *(t.dtype for t in (*h_outs, *(g_outs or ())) if t is not None))
    has_biases = bool(call.saved("has_biases"))

    def saved(name):
        value = call.saved(name)
        return value.to(dtype) if value is not None else None

    diagonals = recurrent.lstm_layer_diagonals(
        x.to(dtype),
        saved("hx_"),
        saved("cx_"),
        saved("weight0"),
        saved("weight1"),
        saved("weight2") if has_biases else None,
        saved("weight3") if has_biases else None,
        saved("result0"),
        h_outs,
        g_outs,
        reverse=bool(call.saved("reverse")),
    )
    return tuple(d if call.needs(i) else None for i, d in enumerate(diagonals))


@register("PackPaddedSequenceBackward0")
def pack_padded_sequence(call: NodeCall):
    """Packing copies entries (J holds zeros and ones): h_x = J^T h_z."""
    return zero_one_jacobian(call)


# cuDNN's fused multi-layer RNN (CUDA) -------------------------------------------------------


def _check_cudnn_rnn(node) -> str | None:
    if saved_value(node, "batch_sizes"):
        return "packed sequences (PackedSequence) in cuDNN's fused RNN; pad them instead"
    if saved_value(node, "train") and saved_value(node, "dropout") > 0:
        return (
            "dropout between layers inside cuDNN's fused RNN: the random mask it drew cannot "
            "be recovered. Use dropout=0 (or nn.Dropout between single-layer RNNs)"
        )
    return None


@register("CudnnRnnBackward0", check=_check_cudnn_rnn)
def cudnn_rnn(call: NodeCall):
    """nn.RNN / nn.LSTM / nn.GRU on CUDA (any number of layers, bidirectional, batch_first,
    LSTM projections): one node for the whole stack, inputs (x, the flat weights, h_0, c_0),
    outputs (output sequence, h_n, c_n). Defined as the stack of cell equations torch's own
    kernels record (rules.recurrent.rnn_stack), on which the engine runs its own rules."""
    mode = CUDNN_RNN_MODES[call.saved("mode")]
    flat = list(call.saved("weight"))
    stride = call.saved("weight_stride0")
    projected = call.saved("proj_size") > 0
    has_biases = stride - projected == 4
    x, hx, cx = call.saved("input"), call.saved("hx"), call.saved("cx")
    n_weights = len(flat)
    h_out, g_out = call.h_out[:3], call.g_out[:3]
    dtype = working_dtype(
        x.dtype, *(t.dtype for t in (*h_out, *g_out) if t is not None)
    )  # rules.precision's policy: float16 as float32

    def stack(x, *rest):
        weights, (hx, cx) = rest[:n_weights], rest[n_weights:]
        per_layer = [_layer_weights(weights[k : k + stride], has_biases, projected)
                     for k in range(0, n_weights, stride)]  # fmt: skip
        return recurrent.rnn_stack(
            mode, x, hx, cx, per_layer, call.saved("num_layers"),
            bool(call.saved("bidirectional")), bool(call.saved("batch_first")),
        )  # fmt: skip

    inputs = [x, *flat, hx, cx if mode == "LSTM" else None]
    inputs = [None if t is None else t.to(dtype) for t in inputs]
    n_in = len(call.grad_in)  # x, the weights, hx, cx (an edge even where cx is undefined)
    needs = [i < n_in and call.needs(i) for i in range(len(inputs))]
    diagonals = decomposition_diagonals(stack, inputs, needs, h_out, g_out, call.second_order)
    return diagonals[:n_in]


def _layer_weights(weights, has_biases: bool, projected: bool):
    """(W_ih, W_hh, b_ih, b_hh, W_hr) from one layer and direction's share of the flat list."""
    w_ih, w_hh = weights[:2]
    b_ih, b_hh = weights[2:4] if has_biases else (None, None)
    return w_ih, w_hh, b_ih, b_hh, weights[-1] if projected else None
