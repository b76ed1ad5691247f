"""Recurrent layers (formulas: rules.recurrent).

On the CPU, nn.LSTM in float32 / bfloat16 records one fused ``MkldnnRnnLayerBackward0`` per
layer and direction; its rule equals the definition applied to the unrolled cell equations.
Everything else recurrent (nn.LSTM in float64 or with proj_size, nn.GRU, nn.RNN and the *Cell
modules) records primitive operations (addmm, sigmoid, tanh, mul, unsafe_split, unbind, stack,
...), which have their own rules; packed sequences add ``PackPaddedSequenceBackward0``.
"""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.shape import zero_one_jacobian
from hesscale.engine.registry import register
from hesscale.internals import saved_value
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
