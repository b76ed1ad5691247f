"""When a diagonal accumulates: exactly when the gradient beside it does.

A pass adds to ``leaf.<variant>`` when that diagonal was written together with the gradient
``leaf.grad`` holds now (the same tensor, unchanged since): both accumulate. After
``zero_grad()`` (set to None, or zeroed in place) or any other change of the gradient, the
diagonal starts afresh. The record of what was written with which gradient lives here, keyed
weakly by the leaf, not on the user's tensors.
"""

from __future__ import annotations

import weakref

from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from hesscale.internals import grad_stamp

# leaf -> {variant: (the diagonal written, the gradient's stamp when it was written)}
_written: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def record(leaf: Tensor, variant: str, diagonal: Tensor) -> None:
    """Note that ``diagonal`` (now ``leaf.<variant>``) was written beside ``leaf.grad``."""
    if leaf.grad is None:
        return
    _written.setdefault(leaf, {})[variant] = (weakref.ref(diagonal), grad_stamp(leaf.grad))


def continues(leaf: Tensor, variant: str) -> bool:
    """Whether the next pass adds to ``leaf.<variant>`` (see the module docstring)."""
    previous = getattr(leaf, variant, None)
    if previous is None or leaf.grad is None:
        return False
    entry = _written.get(leaf, {}).get(variant)
    return entry is not None and entry[0]() is previous and entry[1] == grad_stamp(leaf.grad)
