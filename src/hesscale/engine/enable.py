"""``hesscale.enable``: every ``loss.backward()`` in a block runs as ``hesscale.backward``.

``Tensor.backward`` calls ``torch.autograd.backward`` through the module attribute, so while
any block is active (in any thread) that attribute is replaced by a function that serves the
calls made in threads inside a block and hands every other call to what it replaced. The first
block to start captures the attribute as it is then (another library's patch included); the
last block to end puts exactly that back, unless something patched it again in the meantime,
whose patch is then left in place (it calls ours, which passes calls on unchanged).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor

from hesscale.engine.backward import DiagonalBackward, Variant, variants_of
from hesscale.errors import HesScaleError


class _Patch:
    """The replacement of ``torch.autograd.backward``: installed while any block is active."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active_blocks = 0  # in all threads
        self.replaced: Callable | None = None  # what the first block found
        self.blocks = threading.local()  # per thread: the settings of its blocks, innermost last
        self.installed = self.backward  # one bound method, so that `is` recognises it

    def settings(self) -> list[tuple[Variant, ...]]:
        if not hasattr(self.blocks, "stack"):
            self.blocks.stack = []
        return self.blocks.stack

    def enter(self, variants: tuple[Variant, ...]) -> None:
        with self.lock:
            if self.active_blocks == 0:
                self.replaced = torch.autograd.backward
                torch.autograd.backward = self.installed
            self.active_blocks += 1
        self.settings().append(variants)

    def exit(self) -> None:
        self.settings().pop()
        with self.lock:
            self.active_blocks -= 1
            if self.active_blocks == 0:
                if torch.autograd.backward is self.installed:
                    torch.autograd.backward = self.replaced
                self.replaced = None

    def backward(
        self,
        tensors,
        grad_tensors=None,
        retain_graph=None,
        create_graph=False,
        grad_variables=None,
        inputs=None,
    ):
        """``torch.autograd.backward`` while a block is active somewhere."""
        settings = self.settings()
        if not settings:  # a thread outside every block: autograd as before
            return self.replaced(
                tensors, grad_tensors, retain_graph, create_graph, grad_variables, inputs=inputs
            )
        loss = tensors[0] if isinstance(tensors, list | tuple) and len(tensors) == 1 else tensors
        if isinstance(grad_tensors, list | tuple) and len(grad_tensors) == 1:
            grad_tensors = grad_tensors[0]
        if not isinstance(loss, Tensor) or create_graph or grad_variables is not None:
            raise HesScaleError(
                "hesscale.enable: a backward pass that HesScale cannot serve (several root "
                "tensors or create_graph=True). Call it outside the `with hesscale.enable():` "
                "block."
            )
        inputs = [inputs] if isinstance(inputs, Tensor) else inputs
        DiagonalBackward(loss, settings[-1]).run(inputs, retain_graph, grad_tensors)


_patch = _Patch()


@contextmanager
def enable(gn: bool | Literal["both"] = False) -> Iterator[None]:
    """Within the block, every ``loss.backward()`` (and ``torch.autograd.backward``) on a
    scalar loss in this thread runs as ``hesscale.backward(loss, gn=gn)``: for training code
    that calls backward itself, e.g. a framework's loop::

        with hesscale.enable():
            trainer.fit(model)        # its loss.backward() calls now fill p.hesscale too

    Blocks nest (the innermost settings apply) and are per thread: backward calls in other
    threads behave as before. ``torch.autograd.grad`` is not affected. When the last block in
    the process ends, ``torch.autograd.backward`` is exactly what it was when the first began.

    Args:
        gn: False for HesScale, True for HesScaleGN, 'both' for both (as in
            ``hesscale.backward``).

    Returns:
        A context manager.

    Raises:
        ValueError: for a ``gn`` other than False, True or 'both' (before anything is patched).
        HesScaleError: from a backward pass in the block that cannot compute the diagonal (a
            non-scalar root, several roots, create_graph=True).
    """
    variants = variants_of(gn)  # validate before patching anything
    _patch.enter(variants)
    try:
        yield
    finally:
        _patch.exit()
