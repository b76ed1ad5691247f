"""One LSTM layer (one direction), defined as its unrolled cell equations.

For t = 1..T, with h_0, c_0 the initial states and [i | f | g | o] the four gate blocks:

    a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh        (matmuls, adds)
    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);  g = tanh(a_g)
    c_t = f * c_{t-1} + i * g                                (products, add)
    h_t = o * tanh(c_t)
    outputs: the sequence (h_1..h_T), the last h_T and the last c_T

The definition applied operation by operation, backwards in time: h_t receives what the output
sequence sends plus D_a(t+1) (W_hh^2); c_t receives f_{t+1}^2 D_c(t+1) plus what tanh and the
product with o send; a product u * w sends w^2 D to u (no curvature of its own); each gate's
activation sends sigma'^2 D + sigma'' G, where G is the gradient (run alongside, from the
output gradients). With D_a for all steps:

    D_x = D_a (W_ih^2),   D_W_ih = sum_t D_a^T x^2,   D_W_hh = sum_t D_a^T h_{t-1}^2,
    D_b_ih = D_b_hh = sum_t D_a,   D_h0 = D_a(1) (W_hh^2),   D_c0 = f_1^2 D_c(1).

A reversed layer runs the same equations from t = T down to 1. The gates and cell states are
recomputed from the saved input, outputs and weights (two batched matmuls and one pass over
time); only the recursion through W_hh runs step by step.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _or_zeros(t: Tensor | None, shape, like: Tensor) -> Tensor:
    return like.new_zeros(shape) if t is None else t.to(like.dtype)


def lstm_layer_diagonals(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    output: Tensor,
    h_outs: tuple[Tensor | None, Tensor | None, Tensor | None],
    g_outs: tuple[Tensor | None, Tensor | None, Tensor | None] | None,
    reverse: bool = False,
) -> tuple[Tensor, ...]:
    """(D_x, D_W_ih, D_W_hh, D_b_ih, D_b_hh, D_h0, D_c0) for one LSTM layer.

    ``x`` (T, N, I) is the input and ``output`` (T, N, H) the hidden states h_1..h_T that the
    forward pass computed (time-major, in input order also when ``reverse``); ``h_outs`` /
    ``g_outs`` are the diagonals / gradients w.r.t. (output sequence, last h, last c), None for
    zero; ``g_outs=None`` drops every curvature term (HesScaleGN). D_b_* are None without a bias.
    """
    if reverse:
        x, output = x.flip(0), output.flip(0)
        h_outs = (None if h_outs[0] is None else h_outs[0].flip(0), *h_outs[1:])
        if g_outs is not None:
            g_outs = (None if g_outs[0] is None else g_outs[0].flip(0), *g_outs[1:])
    h_prev = torch.cat([h0.unsqueeze(0), output[:-1]])
    coefficients = _step_coefficients(x, h_prev, c0, w_ih, w_hh, b_ih, b_hh, g_outs is not None)
    d_gates, d_h0, d_c0 = _backward_in_time(coefficients, w_hh, output, h_outs, g_outs)

    steps, batch, hidden = output.shape
    d_gates = d_gates.view(steps, batch, 4 * hidden)
    d_x = torch.matmul(d_gates, w_ih.square())
    if reverse:
        d_x = d_x.flip(0)
    flat = d_gates.view(-1, 4 * hidden).t()
    d_w_ih = flat @ x.reshape(-1, x.shape[-1]).square()
    d_w_hh = flat @ h_prev.view(-1, hidden).square()
    d_b = None if b_ih is None else d_gates.sum((0, 1))
    return d_x, d_w_ih, d_w_hh, d_b, d_b, d_h0, d_c0


def _step_coefficients(x, h_prev, c0, w_ih, w_hh, b_ih, b_hh, second_order: bool) -> dict:
    """Recompute the gates and cell states, and the per-step factors of the recursion.

    With u the factor each gate activation multiplies (i by g, f by c_{t-1}, g by i, o by
    tanh(c_t)) and s the activation (sigmoid; tanh for g):

    - ``gain``: (s' u)^2 and, for the gradient, s' u, stacked (T, rows, N, 4, H);
    - ``curvature``: s'' u (the gates' own curvature, times the gradient);
    - ``cell_gain``: (tanh'(c) o)^2 and tanh'(c) o; ``cell_curvature``: tanh''(c) o;
    - ``forget``: f^2 and f (from c_t back to c_{t-1}).
    """
    steps, batch, hidden = h_prev.shape
    rows = 2 if second_order else 1
    gates = torch.matmul(x, w_ih.t()).add_(torch.matmul(h_prev, w_hh.t()))
    if b_ih is not None:
        gates += b_ih + b_hh
    act = gates.view(steps, batch, 4, hidden)  # activations, in place
    g = torch.tanh(act[:, :, 2])
    act.sigmoid_()
    act[:, :, 2] = g
    i, f, g, o = act.unbind(2)
    cell = torch.empty_like(h_prev)
    c = c0
    input_part = i * g
    for t in range(steps):  # c_t = f_t c_{t-1} + i_t g_t
        c = torch.addcmul(input_part[t], f[t], c, out=cell[t])
    del input_part
    tanh_c = torch.tanh(cell)
    factor = torch.stack([g, torch.cat([c0.unsqueeze(0), cell[:-1]]), i, tanh_c], 2)
    del cell
    first = act * (1 - act)  # s'
    first[:, :, 2] = 1 - g.square()
    out = {"rows": rows}
    if second_order:
        second = first * (1 - 2 * act)  # s''
        second[:, :, 2] = -2 * g * first[:, :, 2]
        out["curvature"] = second.mul_(factor).unbind(0)
    gain = act.new_empty(steps, rows, batch, 4, hidden)
    slope = torch.mul(first, factor, out=gain[:, rows - 1])
    del first, factor
    cell_slope = (1 - tanh_c.square()).mul_(o)
    if second_order:
        torch.square(slope, out=gain[:, 0])
        out["cell_gain"] = torch.stack([cell_slope.square(), cell_slope], 1).unbind(0)
        out["cell_curvature"] = (-2 * tanh_c * cell_slope).unbind(0)
        out["forget"] = torch.stack([f.square(), f], 1).unbind(0)
    else:
        slope.square_()
        out["cell_gain"] = cell_slope.square_().unsqueeze(1).unbind(0)
        out["forget"] = f.square().unsqueeze(1).unbind(0)
    out["gain"] = gain.unbind(0)
    return out


def _backward_in_time(coefficients: dict, w_hh, output, h_outs, g_outs):
    """The recursion from t = T down to 1 on stacked states: row 0 the diagonal, row 1
    (HesScale only) the gradient, which the curvature terms need. Per step: what h_t and c_t
    receive, then the gates' pre-activations, then what h_{t-1} (through W_hh, with its own
    output entry) and c_{t-1} (through f) receive. Returns (D_a, D_h0, D_c0)."""
    rows = coefficients["rows"]
    second_order = rows == 2
    steps, batch, hidden = output.shape
    outs = [h_outs, g_outs] if second_order else [h_outs]
    sequence = torch.stack([_or_zeros(o[0], output.shape, output) for o in outs], 1).unbind(0)
    into_h = torch.stack([_or_zeros(o[1], (batch, hidden), output) for o in outs])
    into_c = torch.stack([_or_zeros(o[2], (batch, hidden), output) for o in outs])
    weight = torch.stack([w_hh.square(), w_hh]) if second_order else w_hh.square().unsqueeze(0)
    gain, cell_gain, forget = (coefficients[k] for k in ("gain", "cell_gain", "forget"))
    pre = output.new_empty(rows, steps, batch, 4, hidden)  # what the pre-activations receive
    pre_steps = pre.unbind(1)
    state_h = into_h + sequence[-1]  # what h_t receives in all
    for t in range(steps - 1, -1, -1):
        state_c = torch.addcmul(into_c, cell_gain[t], state_h)
        if second_order:  # tanh(c_t)'s curvature
            state_c[0].addcmul_(coefficients["cell_curvature"][t], state_h[1])
        into_gates = torch.stack([state_c, state_c, state_c, state_h], 2)
        pre_t = torch.mul(gain[t], into_gates, out=pre_steps[t])
        if second_order:  # the gates' curvature
            pre_t[0].addcmul_(coefficients["curvature"][t], into_gates[1])
        if t > 0:
            state_h = torch.baddbmm(sequence[t - 1], pre_t.view(rows, batch, -1), weight)
        else:
            state_h = torch.bmm(pre_t.view(rows, batch, -1), weight)
        into_c = state_c * forget[t]
    return pre[0], state_h[0], into_c[0]


# A whole stack of recurrent layers, as torch's native (non-fused) kernels record it ----------
#
# cuDNN runs a multi-layer, possibly bidirectional RNN as one fused operation. Its definition is
# the operations torch's own kernels record for the same call (aten's RNN cells, which
# torch._decomp mirrors), written out below; the engine evaluates the HesScale definition on
# them (hesscale.engine.decomposed). Per layer and direction, with x the layer's input sequence:
#
#   a = linear(x, W_ih, b_ih)                   (all steps at once)
#   RNN:  h_t = act(linear(h_{t-1}, W_hh, b_hh) + a_t),   act = tanh or relu
#   LSTM: [i | f | g | o] = linear(h_{t-1}, W_hh, b_hh) + a_t,  c_t = sigmoid(f) * c_{t-1} +
#         sigmoid(i) * tanh(g),  h_t = sigmoid(o) * tanh(c_t)  [, h_t = linear(h_t, W_hr)]
#   GRU:  [r | z | n] of a_t and of u = linear(h_{t-1}, W_hh, b_hh): r = sigmoid(u_r + a_r),
#         z = sigmoid(u_z + a_z), n = tanh(a_n + u_n * r),  h_t = (h_{t-1} - n) * z + n
#
# A reversed direction runs over the flipped sequence; the next layer reads both directions'
# outputs concatenated. (Written out, not shared with the LSTM layer formula above: these are
# the operations themselves, whose rules the engine applies one by one.)


def _rnn_step(mode: str, a_t, h, c, w_hh, b_hh, w_hr):
    u = torch.nn.functional.linear(h, w_hh, b_hh)
    if mode in ("RNN_TANH", "RNN_RELU"):
        pre = u + a_t
        return (torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre)), None
    if mode == "LSTM":
        i, f, g, o = (u + a_t).chunk(4, -1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        return (h if w_hr is None else torch.nn.functional.linear(h, w_hr)), c
    a_r, a_z, a_n = a_t.chunk(3, -1)
    u_r, u_z, u_n = u.chunk(3, -1)
    r, z = (u_r + a_r).sigmoid(), (u_z + a_z).sigmoid()
    n = (a_n + u_n * r).tanh()
    return (h - n) * z + n, None


def rnn_layer(mode: str, x: Tensor, h0: Tensor, c0: Tensor | None, weights, reverse: bool):
    """One layer and direction over the time-major sequence ``x`` (T, N, I): (outputs, last h,
    last c). ``weights`` = (W_ih, W_hh, b_ih, b_hh, W_hr), None where absent."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    a = torch.nn.functional.linear(x, w_ih, b_ih)
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    h, c, outputs = h0, c0, []
    for t in steps:
        h, c = _rnn_step(mode, a[t], h, c, w_hh, b_hh, w_hr)
        outputs.append(h)
    if reverse:
        outputs.reverse()
    return torch.stack(outputs), h, c


def rnn_stack(
    mode: str,
    x: Tensor,
    hx: Tensor,
    cx: Tensor | None,
    weights: list,
    num_layers: int,
    bidirectional: bool,
    batch_first: bool,
):
    """A stack of ``num_layers`` layers (both directions each when ``bidirectional``), as
    nn.RNN / nn.LSTM / nn.GRU compute it without dropout: (outputs of the last layer, h_n, c_n),
    h_n and c_n stacked over layers and directions (c_n None but for the LSTM). ``weights``
    holds one (W_ih, W_hh, b_ih, b_hh, W_hr) per layer and direction."""
    directions = 2 if bidirectional else 1
    sequence = x.transpose(0, 1) if batch_first else x
    last_h, last_c = [], []
    for layer in range(num_layers):
        outputs = []
        for d in range(directions):
            k = layer * directions + d
            out, h, c = rnn_layer(
                mode, sequence, hx[k], None if cx is None else cx[k], weights[k], reverse=d == 1
            )
            outputs.append(out)
            last_h.append(h)
            last_c.append(c)
        sequence = torch.cat(outputs, -1) if directions == 2 else outputs[0]
    output = sequence.transpose(0, 1) if batch_first else sequence
    return output, torch.stack(last_h), None if cx is None else torch.stack(last_c)
