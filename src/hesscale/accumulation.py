"""When a diagonal accumulates: exactly when the gradient beside it does.

A pass adds to ``leaf.<variant>`` when that diagonal was written together with the gradient
``leaf.grad`` holds now (the same tensor, unchanged since): both accumulate. After
``zero_grad()`` (set to None, or zeroed in place), or when the diagonal was never written
beside a gradient, it starts afresh, as the gradient does. Any other change of the gradient
since (``clip_grad_norm_``, a plain ``loss.backward()``, an optimizer's in-place change) would
leave the accumulated gradient and diagonal describing different sums, so it raises
HesScaleError. The record of what was written with which gradient lives here, keyed
weakly by the leaf, not on the user's tensors.
"""

from __future__ import annotations

import weakref

from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from hesscale.errors import HesScaleError
from hesscale.internals import grad_stamp

# leaf -> {variant: (the diagonal written, the gradient's stamp when it was written)}
_written: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def record(leaf: Tensor, variant: str, diagonal: Tensor) -> None:
    """Note that ``diagonal`` (now ``leaf.<variant>``) was written beside ``leaf.grad``."""
    if leaf.grad is None:
        return
    _written.setdefault(leaf, {})[variant] = (weakref.ref(diagonal), grad_stamp(leaf.grad))


def fresh(leaf: Tensor, variant: str) -> bool:
    """Whether ``leaf.<variant>`` was written beside the gradient ``leaf.grad`` holds now (the
    same tensor, unchanged since); False without either."""
    previous = getattr(leaf, variant, None)
    entry = _written.get(leaf, {}).get(variant)
    return (
        previous is not None
        and leaf.grad is not None
        and entry is not None
        and entry[0]() is previous
        and entry[1] == grad_stamp(leaf.grad)
    )


def saved(leaf: Tensor) -> dict:
    """The record of ``leaf`` (to put back with ``restore`` after passes that must leave no
    trace, as ``hesscale.diagonal``'s)."""
    return dict(_written.get(leaf, {}))


def restore(leaf: Tensor, record_of_leaf: dict) -> None:
    """Put back a record taken with ``saved``."""
    if record_of_leaf:
        _written[leaf] = dict(record_of_leaf)
    else:
        _written.pop(leaf, None)


def continues(leaf: Tensor, variant: str) -> bool:
    """Whether the next pass adds to ``leaf.<variant>`` (see the module docstring)."""
    previous = getattr(leaf, variant, None)
    if previous is None or leaf.grad is None:
        return False
    entry = _written.get(leaf, {}).get(variant)
    if entry is None or entry[0]() is not previous:
        return False  # never written beside a gradient (or replaced by the user)
    if entry[1] == grad_stamp(leaf.grad):
        return True
    if leaf.grad.is_meta or not leaf.grad.any():  # zero_grad(set_to_none=False)
        return False
    raise HesScaleError(
        f"A tensor of shape {tuple(leaf.shape)} holds a gradient that changed since "
        f"hesscale.backward last wrote its .{variant} (an in-place change such as "
        "clip_grad_norm_ or GradScaler.unscale_, or a plain loss.backward() in between), so "
        "accumulating into both would pair a gradient and a diagonal of different sums. Call "
        "zero_grad() before the next accumulation, clip after the last micro-batch, or delete "
        f"the tensor's .{variant} to start the diagonal afresh."
    )
