"""The precision every rule computes in: one policy, called by each rule (and by both adaptors).

A diagonal is a sum of squares (h_W = h_z^T @ x^2, h_x = h_z @ W^2, ...). float16 holds values
up to 65504, so it overflows at squares of entries above 256 although the diagonal itself, a
weighted average of such squares, may fit; it also loses the small values a loss starts from
(p (1 - p) / batch). So where float16 takes part, a rule squares and sums in float32, the
quantities passed between operations stay float32, and only a parameter's finished diagonal is
cast back to the parameter's dtype (``cast_like``). bfloat16 has float32's range: it is kept.
Operands of different dtypes (mixed precision: float32 weights, bfloat16 activations) are
promoted to their common dtype as torch would, float16 again becoming float32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def working_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype a rule computes in for floating-point operands of these dtypes."""
    dtype = dtypes[0]
    for other in dtypes[1:]:
        dtype = torch.promote_types(dtype, other)
    return torch.float32 if dtype == torch.float16 else dtype


def promote(*values: Any) -> tuple[Any, ...]:
    """The values, floating-point tensors converted to their common ``working_dtype`` (no copy
    where they already have it); anything else (integer tensors, numbers, None) unchanged."""
    dtype, mixed = None, False
    for v in values:  # the common case, one dtype that is not float16, returns unchanged
        if _is_float(v):
            if dtype is None:
                dtype = v.dtype
            elif v.dtype != dtype:
                mixed = True
    if dtype is None or (not mixed and dtype != torch.float16):
        return values
    dtype = working_dtype(*(v.dtype for v in values if _is_float(v)))
    return tuple(v.to(dtype) if _is_float(v) and v.dtype != dtype else v for v in values)


def _is_float(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point()


def upcast(t: Tensor) -> Tensor:
    """One tensor in its working dtype (float16 -> float32, anything else unchanged)."""
    return t.to(torch.float32) if t.dtype == torch.float16 else t


def cast_like(h: Tensor, like: Tensor) -> Tensor:
    """A finished diagonal in the dtype of the tensor it belongs to (e.g. a float16 parameter);
    values beyond that dtype's range become inf, as they would in the parameter itself."""
    return h if h.dtype == like.dtype else h.to(like.dtype)


def exp_without_subnormals(t: Tensor) -> Tensor:
    """exp(t), with results below the dtype's smallest normal number raised to it.

    Probabilities of very unlikely classes, attention weights of far-off keys and Gaussian
    densities far in the tails underflow to subnormal numbers, which x86 processors compute
    20-100x slower; a diagonal does not need them (they enter multiplied by other terms and
    change nothing at the dtype's precision). One clamp of the exponent avoids them (with a
    margin of 1, as exp rounds)."""
    return t.clamp(min=lowest_normal_exponent(t.dtype)).exp_()


def lowest_normal_exponent(dtype: torch.dtype) -> float:
    """A t whose exp(t) is safely above the dtype's smallest normal number."""
    return math.log(torch.finfo(dtype).tiny) + 1.0
