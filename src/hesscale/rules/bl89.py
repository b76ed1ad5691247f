"""BL89 (Becker & LeCun 1989): the softmax family seen through the diagonal of its Jacobian.

BL89 backpropagates HesScale's diagonal recursion but treats every unit of the output layer
element-wise: output i of a softmax is taken as a function of input i alone, the other inputs
held fixed. With c_i = logsumexp_{j != i} z_j (along the softmax dimension),

    softmax(z)_i     = sigmoid(z_i - c_i),
    log_softmax(z)_i = logsigmoid(z_i - c_i),

so the element-wise rule h_x = sigma'(x)^2 h_z + sigma''(x) g_z applies with sigmoid's (or
logsigmoid's) derivatives at the shifted input x = z_i - c_i. For cross-entropy (log-softmax,
then the negative log-likelihood, which is linear in the log-probabilities: no curvature of
its own, gradient g) this leaves logsigmoid''(z_i - c_i) g_i = -p_i (1 - p_i) g_i, i.e.
p_t - p_t^2 on the target logit t only (g = -1 there, 0 elsewhere), instead of HesScale's
exact p - p^2 on every logit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesscale.rules.elementwise import (
    elementwise_input,
    logsigmoid_derivatives,
    sigmoid_derivatives,
)


def shifted_logits(z: Tensor, dim: int) -> Tensor:
    """z_i - logsumexp_{j != i} z_j along ``dim``: the input at which softmax_i, as a function
    of z_i alone, is a sigmoid. Needs at least two entries along ``dim``."""
    moved = z.movedim(dim, -1)
    size = moved.shape[-1]
    if size < 2:
        raise ValueError(f"BL89's element-wise softmax needs at least 2 entries along dim {dim}")
    mask = torch.eye(size, dtype=torch.bool, device=z.device)
    others = moved.unsqueeze(-2).masked_fill(mask, float("-inf")).logsumexp(-1)
    return (moved - others).movedim(-1, dim)


def softmax_input(z: Tensor, h_out: Tensor, g_out: Tensor | None, dim: int) -> Tensor:
    """h_z for z -> softmax(z) taken element-wise: sigmoid's rule at z_i - c_i."""
    first, second = sigmoid_derivatives(shifted_logits(z, dim))
    return elementwise_input(h_out, g_out, first, second)


def log_softmax_input(z: Tensor, h_out: Tensor, g_out: Tensor | None, dim: int) -> Tensor:
    """h_z for z -> log_softmax(z) taken element-wise: logsigmoid's rule at z_i - c_i."""
    first, second = logsigmoid_derivatives(shifted_logits(z, dim))
    return elementwise_input(h_out, g_out, first, second)


def cross_entropy_input(logits: Tensor, g_log_probs: Tensor, dim: int = 1) -> Tensor:
    """h_logits for a loss linear in log_softmax(logits) along ``dim`` (cross-entropy), whose
    gradient w.r.t. the log-probabilities is ``g_log_probs``: logsigmoid''(z_i - c_i) g_i."""
    return log_softmax_input(logits, torch.zeros_like(logits), g_log_probs, dim)
