"""Embedding lookups (formulas: rules.embedding)."""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.registry import register
from hesscale.internals import apply_backward
from hesscale.rules import embedding


@register("EmbeddingBackward0")
def embedding_lookup(call: NodeCall):
    """z[k] = W[i_k]: h_W = J^T h_z (dense, also for sparse=True, whose gradient is sparse)."""
    h = call.h
    if h is None:
        return (None,)
    h_w = apply_backward(call.node, h)[0]
    if h_w.is_sparse:
        h_w = h_w.to_dense()
    if call.saved("scale_grad_by_freq"):
        h_w = embedding.frequency_scaled(h_w, call.saved("indices"))
    return (h_w,)
