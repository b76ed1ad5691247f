"""Embedding lookups and bags (formulas: rules.embedding)."""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.registry import register
from hesscale.internals import apply_backward, saved_value
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


def _embedding_bag_check(node) -> str | None:
    if saved_value(node, "scale_grad_by_freq"):
        return (
            "EmbeddingBag with scale_grad_by_freq=True (its gradient is rescaled by index "
            "frequencies); use scale_grad_by_freq=False"
        )
    return None


MEAN, MAX = 1, 2  # EmbeddingBag's mode numbers (0: sum)


@register("EmbeddingBagBackward0", check=_embedding_bag_check)
def embedding_bag(call: NodeCall):
    """z[b] = sum (or mean, or max) of the rows read by bag b (rules.embedding)."""
    h = call.h
    if h is None:
        return None, None
    mode = call.saved("mode")
    if mode == MAX:  # one row per bag and feature: h_W = J^T h_z
        h_w = apply_backward(call.node, h)[0]
        return (h_w.to_dense() if h_w.is_sparse else h_w), None
    indices = call.saved("indices")
    padding_idx, per_sample = call.saved("padding_idx"), call.saved("per_sample_weights")
    bag = embedding.bag_of_entries(call.saved("offsets"), indices.numel(), h.shape[0])
    h_w = h_c = None
    if call.needs(0):
        sizes = call.saved("result2") if mode == MEAN else None
        c = embedding.bag_coefficients(
            indices, bag, h.shape[0], per_sample, sizes, padding_idx, h.dtype
        )
        rows = call.saved("weight_sym_argsize_0")
        h_w = embedding.embedding_bag_weight(h, indices, bag, c, rows)
    if len(call.grad_in) > 1 and call.needs(1):
        weight = call.saved("weight")  # saved when the per-sample weights need a gradient
        h_c = embedding.embedding_bag_sample_weights(h, weight, indices, bag, padding_idx)
    return h_w, h_c
