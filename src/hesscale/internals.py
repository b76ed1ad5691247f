"""Every use of torch's private or debugging-only API in hesscale, in one place.

PyTorch documents none of these as stable. Each has a test in ``tests/test_internals.py`` that
fails loudly when a torch release renames or changes it; fix it here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import torch

Node = torch.autograd.graph.Node


def saved_value(node: Node, name: str) -> Any:
    """What an autograd node saved in the forward pass under ``name`` (``node._saved_<name>``).

    The names are those of torch's derivatives.yaml (e.g. ``self``, ``mat1``, ``result``);
    ``shared/notes/autograd-nodes.md`` lists the ones common models record.
    """
    return _signed(getattr(node, "_saved_" + name))


def _signed(value: Any) -> Any:
    """torch 2.x hands some saved int64 values (e.g. a softmax's dim=-1) to Python as unsigned:
    2**64 - 1 for -1. Map them back."""
    if isinstance(value, int) and value >= 2**63:
        return value - 2**64
    if isinstance(value, tuple) and any(isinstance(v, int) and v >= 2**63 for v in value):
        return tuple(_signed(v) for v in value)
    return value


def has_saved_value(node: Node, name: str) -> bool:
    return hasattr(node, "_saved_" + name)


def accumulated_variable(node: Node) -> torch.Tensor | None:
    """The leaf tensor an ``AccumulateGrad`` node accumulates into (None for other nodes)."""
    return getattr(node, "variable", None)


def forward_traceback(node: Node) -> str | None:
    """The forward-pass traceback autograd's anomaly mode stores in a node, if it ran (the
    last frames, where the operation was called)."""
    frames = node.metadata.get("traceback_")
    if not frames:
        return None
    return "".join(frames[-4:]) if isinstance(frames, list) else str(frames)


def apply_backward(node: Node, *grads_out: torch.Tensor | None) -> tuple:
    """Run a node's backward formula on ``grads_out`` (one per forward output; None: zero):
    its vector-Jacobian product, one entry per input (None where an input needs none).
    Calling a node directly runs neither its hooks nor autograd's bookkeeping."""
    result = node(*grads_out)
    return result if isinstance(result, tuple) else (result,)


def output_shape(node: Node, index: int) -> tuple[int, ...]:
    """The shape of forward output ``index`` of ``node`` (the tensor its gradient has),
    from autograd's ``_input_metadata`` (a node's inputs are the forward outputs)."""
    return tuple(node._input_metadata[index].shape)


def output_count(node: Node) -> int:
    """How many forward outputs ``node`` has (the gradients its backward formula takes)."""
    return len(node._input_metadata)


def wrapped_node(node: Node) -> Node | None:
    """The node a ``CopySlices`` node wraps: the in-place operation applied to a view of its
    base (e.g. ``CopyBackwards`` for ``base[...] = src``); None for other nodes."""
    return getattr(node, "_wrapped_node", None)
