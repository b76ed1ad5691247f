"""Embedding lookups z[k] = W[i_k] (rows of a weight matrix selected by indices).

Each output row copies one weight row, so J holds zeros and ones, there is no curvature and
h_W = J^T h_z: the rows of h_z summed into the rows they were read from (the lookup's own
backward formula applied to h_z; a padding_idx row receives nothing, as its gradient).

With scale_grad_by_freq=True autograd scales row i's gradient by 1 / f_i, f_i the number of
times index i occurs in the batch, i.e. its Jacobian entries are 1 / f_i: h_W[i] =
(sum of the h_z rows read from i) / f_i^2.
"""

from __future__ import annotations

import torch
from torch import Tensor


def frequency_scaled(h_rows: Tensor, indices: Tensor) -> Tensor:
    """(J^T h_z scaled by 1 / f_i, as autograd's backward gives it) / f_i: the rows of
    ``h_rows`` (num_embeddings, ...) divided once more by the frequency of their index."""
    counts = torch.bincount(indices.reshape(-1), minlength=h_rows.shape[0])
    counts = counts.clamp_min(1).to(h_rows.dtype)
    return h_rows / counts.view(-1, *([1] * (h_rows.dim() - 1)))


# EmbeddingBag: z[b] = sum over the entries j of bag b of c_j W[i_j] (mode 'sum': c_j = the
# per-sample weight or 1; 'mean': c_j = 1 / the number of entries of the bag; padding_idx
# entries: c_j = 0). A row may occur several times in one bag, so dz[b] / dW[i] is the sum
# C[b, i] of the c_j of its occurrences there and h_W[i] = sum_b C[b, i]^2 h_z[b] (squaring
# each c_j separately would be wrong). Linear in W and in the per-sample weights separately:
# no curvature. (Mode 'max' selects one row per bag and feature: a 0/1 Jacobian.)


def bag_of_entries(offsets: Tensor, entries: int, bags: int) -> Tensor:
    """The bag of each of the ``entries`` indices: bag b holds entries offsets[b] up to
    offsets[b + 1] (the last bag: up to the end, or up to offsets[bags] when the offsets
    include the last one); entries after that, which the forward pass ignores, get bag index
    ``bags`` (none)."""
    positions = torch.arange(entries, device=offsets.device)
    bag = torch.searchsorted(offsets[:bags], positions, right=True) - 1
    if offsets.numel() > bags:  # include_last_offset=True
        bag = torch.where(positions < offsets[bags], bag, bags)
    return bag


def bag_coefficients(
    indices: Tensor,
    bag: Tensor,
    bags: int,
    per_sample_weights: Tensor | None,
    bag_sizes: Tensor | None,
    padding_idx: int,
    dtype: torch.dtype,
) -> Tensor:
    """c_j for every entry (see above): the per-sample weight (or 1), divided by the divisor
    torch used for its bag in mode 'mean' (``bag_sizes``, as the forward pass computed them);
    0 for padding entries and entries in no bag."""
    c = ((bag < bags) & (indices != padding_idx)).to(dtype)
    if per_sample_weights is not None:
        c = c * per_sample_weights
    if bag_sizes is not None:
        sizes = bag_sizes.clamp_min(1).to(dtype)
        c = c / torch.cat([sizes, sizes.new_ones(1)])[bag]
    return c


def embedding_bag_weight(
    h_out: Tensor, indices: Tensor, bag: Tensor, c: Tensor, num_weights: int
) -> Tensor:
    """h_W[i] = sum_b C[b, i]^2 h_z[b], C[b, i] the sum of c_j over the entries of bag b that
    read row i."""
    pairs, which = torch.unique(bag * num_weights + indices, return_inverse=True)
    total = c.new_zeros(pairs.shape).index_add_(0, which, c)
    pair_bag, pair_row = pairs // num_weights, pairs % num_weights
    keep = pair_bag < h_out.shape[0]
    pair_bag, pair_row, total = pair_bag[keep], pair_row[keep], total[keep]
    h_w = h_out.new_zeros(num_weights, *h_out.shape[1:])
    return h_w.index_add_(0, pair_row, h_out[pair_bag] * total.square().unsqueeze(-1))


def embedding_bag_sample_weights(
    h_out: Tensor, weight: Tensor, indices: Tensor, bag: Tensor, padding_idx: int
) -> Tensor:
    """Mode 'sum' with per-sample weights c_j: dz[b_j] / dc_j = W[i_j], so
    h_c[j] = sum over features of h_z[b_j] W[i_j]^2 (0 for padding entries)."""
    inside = bag < h_out.shape[0]
    h_c = (h_out[bag.clamp_max(h_out.shape[0] - 1)] * weight[indices].square()).sum(-1)
    return torch.where(inside & (indices != padding_idx), h_c, 0.0)
