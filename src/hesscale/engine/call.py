"""What a rule sees of one node of the recorded graph while the diagonal backward runs."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from hesscale.internals import saved_value


class NodeCall:
    """One node being processed.

    - ``h_out[j]``: the diagonal w.r.t. the node's forward output j (None: zero);
    - ``g_out[j]``: the gradient w.r.t. output j (None: zero);
    - ``grad_in[i]``: autograd's gradient for input i, in the input's shape (None: input i
      needs no gradient, hence no diagonal);
    - ``second_order``: whether to add the operation's own curvature,
      sum_k g_k d^2 z_k / dx^2 (False in HesScaleGN below the network output).
    """

    __slots__ = ("node", "h_out", "g_out", "grad_in", "second_order")

    def __init__(
        self,
        node: Any,
        h_out: tuple[Tensor | None, ...],
        g_out: tuple[Tensor | None, ...],
        grad_in: tuple[Tensor | None, ...],
        second_order: bool,
    ) -> None:
        self.node = node
        self.h_out = h_out
        self.g_out = g_out
        self.grad_in = grad_in
        self.second_order = second_order

    @property
    def h(self) -> Tensor | None:
        """The diagonal w.r.t. the (first) output."""
        return self.h_out[0]

    @property
    def g(self) -> Tensor | None:
        """The gradient w.r.t. the (first) output, or None when the second-order term is off."""
        return self.g_out[0] if self.second_order else None

    def saved(self, name: str) -> Any:
        """What the node saved in the forward pass under ``name`` (derivatives.yaml names)."""
        return saved_value(self.node, name)

    def needs(self, i: int) -> bool:
        """Whether input i receives a diagonal."""
        return self.grad_in[i] is not None

    def input_shape(self, i: int) -> tuple[int, ...]:
        return tuple(self.grad_in[i].shape)
