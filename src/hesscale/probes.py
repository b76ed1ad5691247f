"""Random probe vectors for Hutchinson-style estimates, diag(H) = E[v * (H v)]."""

from __future__ import annotations

import torch
from torch import Tensor


def rademacher(
    shape: tuple[int, ...] | torch.Size, like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Independent entries +1 or -1 with probability 1/2 each, dtype and device of ``like``."""
    bits = torch.randint(0, 2, tuple(shape), generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)
