"""Every use of torch's (and BackPACK's) private or debugging-only API in hesscale, in one place.

PyTorch and BackPACK document none of these as stable. Each has a test in
``tests/test_internals.py`` that fails loudly when a release renames or changes it; fix it here
and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Node = torch.autograd.graph.Node


def saved_value(node: Node, name: str) -> Any:
    """What an autograd node saved in the forward pass under ``name`` (``node._saved_<name>``).

    The names are those of torch's derivatives.yaml (e.g. ``self``, ``mat1``, ``result``);
    ``shared/notes/autograd-nodes.md`` lists the ones common models record.
    """
    return getattr(node, "_saved_" + name)


def has_saved_value(node: Node, name: str) -> bool:
    return hasattr(node, "_saved_" + name)


# --- the autograd engine (used by the BackPACK adaptor's per-pass bookkeeping) --------------


def current_graph_task_id() -> int:
    """An id of the backward pass being run (-1 outside one): tells passes apart."""
    return torch._C._current_graph_task_id()


def queue_engine_callback(callback: Callable[[], None]) -> None:
    """Run ``callback`` when the current backward pass ends (only if it ends without error);
    an exception it raises comes out of ``backward()``."""
    torch.autograd.Variable._execution_engine.queue_callback(callback)


def will_engine_execute(node: Node) -> bool:
    """Whether the current backward pass will run ``node`` (False for the nodes that
    ``backward(inputs=...)`` or ``torch.autograd.grad`` leave out). Not for leaves' nodes."""
    return torch._C._will_engine_execute_node(node)


# Graph nodes that module hooks and shape-only operations record (node.name()).
BACKWARD_HOOK_NODE = "BackwardHookFunctionBackward"  # a full backward hook's identity node
# reshape / view / contiguous: the entries in the same (logical, row-major) order
ORDER_PRESERVING_NODES = frozenset(
    {"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "CloneBackward0"}
)


# --- BackPACK --------------------------------------------------------------------------------


def clear_saved_quantities(extension: Any) -> None:
    """Drop every quantity a BackPACK extension holds between modules (its SavedQuantities
    keeps them in a private dict)."""
    extension.saved_quantities._saved_quantities.clear()


def saved_quantity_count(extension: Any) -> int:
    return len(extension.saved_quantities._saved_quantities)


# --- ATen kernels without a public Python API ------------------------------------------------


def adaptive_avg_pool_backward(grad: Tensor, x: Tensor, spatial_dims: int) -> Tensor:
    """The vector-Jacobian product of adaptive average pooling over the last ``spatial_dims``
    (2 or 3) dims of ``x``: ``grad`` spread evenly over each window (ATen's own kernel)."""
    kernel = {
        2: torch.ops.aten._adaptive_avg_pool2d_backward,
        3: torch.ops.aten._adaptive_avg_pool3d_backward,
    }[spatial_dims]
    return kernel(grad, x)
