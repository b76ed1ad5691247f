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
    return getattr(node, "_saved_" + name)


def has_saved_value(node: Node, name: str) -> bool:
    return hasattr(node, "_saved_" + name)
