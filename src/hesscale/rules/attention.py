"""Scaled dot-product attention, defined as its decomposition into primitive operations.

Per batch entry and head, with q (L x E), k (S x E), v (S x Ev), a scale s and an additive mask
M (0 / -inf for boolean and causal masks, any float otherwise):

    A = q k^T          (matmul)
    B = s A + M        (scale, mask)
    P = softmax(B)     (along the keys)
    O = P v            (matmul)

The definition applied operation by operation, from the diagonal D_O and gradient g_O w.r.t. O
(matrix products are bilinear: no curvature of their own in either factor):

    D_P = D_O (v^2)^T,          g_P = g_O v^T,          D_v = (P^2)^T D_O
    D_B = softmax rule (rules.softmax) from (P, D_P, g_P)
    D_q = s^2 D_B k^2,          D_k = s^2 D_B^T q^2,     D_M = D_B

The probabilities are rebuilt from what the fused kernels save: P = exp(s q k^T + M - lse),
with lse the log-sum-exp of each row of B. Rows that mask every key have P = 0 (and receive 0).
Grouped-query attention (fewer key / value heads than query heads) repeats each key / value
head for its group of query heads; a repeat's diagonal is the sum over its copies.
Only L x S tensors per head are formed, never a Jacobian.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hesscale.rules.precision import lowest_normal_exponent
from hesscale.rules.softmax import softmax_input


def default_scale(query: Tensor, scale: float | None) -> float:
    """torch's default scale 1 / sqrt(E) when none was given."""
    return 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale


def attention_probabilities(
    query: Tensor,
    key: Tensor,
    logsumexp: Tensor,
    scale: float,
    mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """P = exp(s q k^T + M - lse) (``key`` already repeated to the query heads).

    ``is_causal`` masks key j > query i (the causal mask aligned to the top left, as
    torch.nn.functional.scaled_dot_product_attention); a boolean ``mask`` keeps True entries.
    Boolean and causal masks multiply P by 0 / 1 (exact, and on the CPU several times faster
    than filling in -inf through a boolean mask). The exponent is clamped to at most 0 (no
    overflow in a masked entry) and, before an additive mask, to at least the lowest normal
    exponent (no subnormal P).
    """
    length, keys = query.shape[-2], key.shape[-2]
    logsumexp = torch.where(torch.isneginf(logsumexp), 0.0, logsumexp)  # fully masked rows
    # s q k^T - lse in one batched product
    scores = torch.baddbmm(
        logsumexp.reshape(-1, length, 1).neg(),
        query.reshape(-1, length, query.shape[-1]),
        key.reshape(-1, keys, key.shape[-1]).transpose(1, 2),
        alpha=scale,
    ).view(*query.shape[:-1], keys)
    lowest = lowest_normal_exponent(scores.dtype)
    if mask is not None and mask.dtype != torch.bool:  # -inf in the mask stays -inf: P = 0
        scores = scores.clamp_(min=lowest).add_(mask).clamp_(max=0)
    else:
        scores = scores.clamp_(min=lowest, max=0)
    probs = scores.exp_()
    if mask is not None and mask.dtype == torch.bool:
        probs = probs.mul_(mask)
    if is_causal:
        ones = torch.ones(length, keys, dtype=probs.dtype, device=probs.device)
        probs = probs.mul_(ones.tril_())
    return probs


def repeat_heads(t: Tensor, heads: int) -> Tensor:
    """Key / value heads repeated to ``heads`` query heads (grouped-query attention)."""
    groups = heads // t.shape[-3]
    return t if groups == 1 else t.repeat_interleave(groups, dim=-3)


def sum_head_groups(h: Tensor, kv_heads: int) -> Tensor:
    """The diagonal of a repeated head: the sum over its copies (undoes repeat_heads)."""
    if h.shape[-3] == kv_heads:
        return h
    return h.unflatten(-3, (kv_heads, h.shape[-3] // kv_heads)).sum(-3)


def attention_diagonals(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    probs: Tensor,
    scale: float,
    h_out: Tensor | None,
    g_out: Tensor | None,
    needs: tuple[bool, bool, bool, bool] = (True, True, True, False),
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """(D_q, D_k, D_v, D_M) from the diagonal ``h_out`` and gradient ``g_out`` w.r.t. O (None:
    zero; ``g_out=None`` drops the softmax's curvature, HesScaleGN). ``needs`` says which of
    q, k, v, M need one. ``key`` / ``value`` may have fewer heads (grouped-query attention)."""
    if h_out is None and g_out is None:
        return None, None, None, None
    heads, kv_heads = query.shape[-3], key.shape[-3]
    key, value = repeat_heads(key, heads), repeat_heads(value, heads)
    if h_out is None:
        h_out = torch.zeros_like(g_out)
    # batched 3-D products: transposes stay views
    shape = probs.shape
    p3 = probs.reshape(-1, *shape[-2:])
    h3 = h_out.reshape(-1, *h_out.shape[-2:])
    v3 = value.reshape(-1, *value.shape[-2:])
    h_value = None
    if needs[2]:
        h_value = torch.bmm(p3.square().transpose(1, 2), h3).view(value.shape)
        h_value = sum_head_groups(h_value, kv_heads)
    if not (needs[0] or needs[1] or needs[3]):
        return None, None, h_value, None
    h_probs = torch.bmm(h3, v3.square().transpose(1, 2)).view(shape)
    g_probs = None
    if g_out is not None:
        g3 = g_out.reshape(-1, *g_out.shape[-2:])
        g_probs = torch.bmm(g3, v3.transpose(1, 2)).view(shape)
    h_scores = softmax_input(probs, h_probs, g_probs, -1)
    s3 = h_scores.reshape(-1, *shape[-2:])
    h_query = h_key = None
    if needs[0]:
        k2 = key.reshape(-1, *key.shape[-2:]).square().mul_(scale * scale)
        h_query = torch.bmm(s3, k2).view(query.shape)
    if needs[1]:
        q2 = query.reshape(-1, *query.shape[-2:]).square().mul_(scale * scale)
        h_key = torch.bmm(s3.transpose(1, 2), q2).view(key.shape)
        h_key = sum_head_groups(h_key, kv_heads)
    return h_query, h_key, h_value, h_scores if needs[3] else None
