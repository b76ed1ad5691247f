"""Detecting hooks that change gradients during ``hesscale.backward``.

A hook that returns a new gradient (``tensor.register_hook(lambda g: 2 * g)``, a module's full
backward hook or pre-hook returning new gradients) changes the function autograd differentiates
from there on, but not the curvature the rules compute: the result would mix two functions. Such
hooks are invisible in the recorded graph (torch keeps a non-leaf tensor's hooks in C++), so
they are detected while the pass runs, from what they do:

- each gradient a node sends to a single consumer must arrive there as the same tensor object
  (autograd passes it on untouched unless a hook returned another one; checked at once);
- a gradient summed from several consumers must equal the sum of what they sent, to 1e-4
  relative in the 2-norm (checked at the end of the pass, so that no device synchronises in
  the middle of it);
- a module's full backward hook runs on an identity node whose gradients out must be its
  gradients in.

Read-only hooks (returning None) change nothing and keep working. Hooks on leaves (parameters)
change only what ``p.grad`` accumulates and are not checked; reshuffles (views) that the engine
runs itself are not checked either.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesscale.errors import HesScaleError
from hesscale.internals import BACKWARD_HOOK_NODE

Node = torch.autograd.graph.Node
Key = tuple[Node, int]
SUM_TOLERANCE = 1e-4  # relative, in the 2-norm

MESSAGE = (
    "A backward hook changed the gradient {where}: it returned a new gradient instead of None. "
    "Such a hook changes the function being differentiated, which the diagonal's rules cannot "
    "know, so hesscale.backward refuses it rather than mix two functions (read-only hooks, "
    "returning None, are fine). {state} Scale the loss or the tensor in the forward pass "
    "instead, or remove the hook for the passes that compute diagonals."
)


class GradientWatch:
    """What each node sent to each of its inputs, to compare with what arrives there."""

    def __init__(self) -> None:
        self.sent: dict[Key, tuple[Tensor, int]] = {}
        self.unchecked: set[Key] = set()
        self.suspects: list[tuple[str, Tensor]] = []

    def send(self, key: Key, grad: Tensor) -> None:
        """A consumer sent ``grad`` to output ``key[1]`` of node ``key[0]``."""
        previous = self.sent.get(key)
        self.sent[key] = (grad, 1) if previous is None else (previous[0] + grad, previous[1] + 1)

    def send_unchecked(self, key: Key) -> None:
        """A gradient reached ``key`` through nodes the engine does not watch (reshuffles)."""
        self.unchecked.add(key)

    def arrive(self, node: Node, grad_inputs: tuple, grad_outputs: tuple) -> None:
        """The gradients ``node`` received; raises HesScaleError where a hook replaced one."""
        for j, grad in enumerate(grad_outputs):
            key = (node, j)
            entry = self.sent.pop(key, None)
            if key in self.unchecked:
                self.unchecked.discard(key)
                continue
            if entry is None or grad is None:
                continue
            expected, count = entry
            if count == 1:
                if grad is not expected:
                    self._refuse(f"that reached {node.name()} (output {j})", during=True)
            elif not grad.is_meta:  # (values unknown on the meta device)
                # ||grad - sum|| > 1e-4 ||sum||: far above the rounding of a sum taken in
                # another order; two reductions, read when the pass has ended
                changed = torch.dist(grad, expected) > SUM_TOLERANCE * expected.norm()
                self.suspects.append((f"that reached {node.name()} (output {j})", changed))
        if node.name() == BACKWARD_HOOK_NODE:
            for grad_in, grad_out in zip(grad_inputs, grad_outputs, strict=False):
                if grad_out is not None and grad_in is not None and grad_in is not grad_out:
                    self._refuse("at a module's full backward hook", during=True)

    def check_sums(self) -> None:
        """After the pass: raise if a summed gradient differed from the sum sent."""
        for where, changed in self.suspects:
            if bool(changed):
                self._refuse(where, during=False)

    @staticmethod
    def _refuse(where: str, during: bool) -> None:
        state = (
            "The backward pass stopped there: the gradients of the tensors nearer the loss may "
            "already be written; call zero_grad() before the next pass."
            if during
            else "The gradients of this pass are written; no diagonal was. Call zero_grad() "
            "before the next pass."
        )
        raise HesScaleError(MESSAGE.format(where=where, state=state))
