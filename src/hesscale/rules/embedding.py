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
