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
    second_order = g_outs is not None
    steps, batch, hidden = output.shape
    if reverse:
        x, output = x.flip(0), output.flip(0)
    h_prev = torch.cat([h0.unsqueeze(0), output[:-1]])
    gates = torch.matmul(x, w_ih.t()).add_(torch.matmul(h_prev, w_hh.t()))
    if b_ih is not None:
        gates += b_ih + b_hh
    gates = gates.view(steps, batch, 4, hidden)

    # activations and their derivatives: sigmoid for i, f, o; tanh for g
    act = torch.sigmoid(gates)
    act[:, :, 2] = torch.tanh(gates[:, :, 2])
    first = act * (1 - act)
    first[:, :, 2] = 1 - act[:, :, 2].square()
    i, f, g, o = act.unbind(2)
    cell = torch.empty_like(output)
    c = c0
    for t in range(steps):
        c = torch.addcmul(f[t] * c, i[t], g[t], out=cell[t])
    tanh_c = torch.tanh(cell)
    c_prev = torch.cat([c0.unsqueeze(0), cell[:-1]])
    # each gate's activation is multiplied by: i by g, f by c_{t-1}, g by i, o by tanh(c_t)
    factor = torch.stack([g, c_prev, i, tanh_c], 2)
    slope = first * factor  # d (product) / d (gate pre-activation)
    gain = slope.square()
    dtanh = 1 - tanh_c.square()
    cell_gain = (dtanh * o).square()  # from h_t = o tanh(c_t) to c_t
    if second_order:
        second = first * (1 - 2 * act)
        second[:, :, 2] = -2 * act[:, :, 2] * first[:, :, 2]
        curvature = second * factor
        cell_slope = dtanh * o
        cell_curvature = -2 * tanh_c * cell_slope

    h_seq, h_last, c_last = h_outs
    h_seq = _or_zeros(h_seq, output.shape, output)
    if reverse:
        h_seq = h_seq.flip(0)
    d_h = _or_zeros(h_last, h0.shape, output)  # what h_t receives from after step t
    d_c = _or_zeros(c_last, c0.shape, output)
    if second_order:
        g_seq, g_last, gc_last = g_outs
        g_seq = _or_zeros(g_seq, output.shape, output)
        if reverse:
            g_seq = g_seq.flip(0)
        gr_h = _or_zeros(g_last, h0.shape, output)
        gr_c = _or_zeros(gc_last, c0.shape, output)
    w_hh2 = w_hh.square()
    d_gates = torch.empty_like(gates)
    for t in range(steps - 1, -1, -1):
        d_h = d_h + h_seq[t]
        d_c = torch.addcmul(d_c, cell_gain[t], d_h)
        if second_order:
            gr_h = gr_h + g_seq[t]
            d_c.addcmul_(cell_curvature[t], gr_h)
            gr_c = torch.addcmul(gr_c, cell_slope[t], gr_h)
        d_up = torch.stack([d_c, d_c, d_c, d_h], 1)
        d_a = torch.mul(gain[t], d_up, out=d_gates[t])
        if second_order:
            gr_up = torch.stack([gr_c, gr_c, gr_c, gr_h], 1)
            d_a.addcmul_(curvature[t], gr_up)
            gr_a = slope[t] * gr_up
            gr_h = gr_a.view(batch, -1) @ w_hh
            gr_c = gr_c * f[t]
        d_h = d_a.view(batch, -1) @ w_hh2
        d_c = d_c * f[t].square()

    d_gates = d_gates.view(steps, batch, 4 * hidden)
    d_x = torch.matmul(d_gates, w_ih.square())
    if reverse:
        d_x = d_x.flip(0)
    flat = d_gates.view(-1, 4 * hidden).t()
    d_w_ih = flat @ x.reshape(-1, x.shape[-1]).square()
    d_w_hh = flat @ h_prev.view(-1, hidden).square()
    d_b = None if b_ih is None else d_gates.sum((0, 1))
    return d_x, d_w_ih, d_w_hh, d_b, d_b, d_h, d_c
