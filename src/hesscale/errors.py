"""The errors every layer of hesscale may raise (rules, adaptors, the engine, the optimizers)."""

from __future__ import annotations


class HesScaleError(RuntimeError):
    """A model, loss or call that HesScale cannot handle correctly."""


class UnsupportedModuleError(HesScaleError, NotImplementedError):
    """A module type (or configuration) without a HesScale rule."""


class UnsupportedOperationError(HesScaleError, NotImplementedError):
    """An autograd operation (a node of the recorded graph) without a HesScale rule."""


class Diverged(FloatingPointError):
    """A training step that cannot be taken: its loss or its update is not finite."""
