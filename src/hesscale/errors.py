"""The errors every layer of hesscale may raise (rules, adaptors, the engine, the optimizers)."""

from __future__ import annotations


class HesScaleError(RuntimeError):
    """A model, loss or call that HesScale cannot handle correctly."""


class ComponentError(ValueError):
    """An experiment's task, network or learner that cannot be used as named: an import path
    that does not import, a missing attribute, an object of the wrong kind, a factory with the
    wrong signature or one that builds the wrong kind of object."""


class UnsupportedModuleError(HesScaleError, NotImplementedError):
    """A module type (or configuration) without a HesScale rule."""


class UnsupportedOperationError(HesScaleError, NotImplementedError):
    """An autograd operation (a node of the recorded graph) without a HesScale rule."""


class Diverged(FloatingPointError):
    """A training step that cannot be taken: its loss or its update is not finite."""


class MissingExtraError(ModuleNotFoundError):
    """A package of one of hesscale's optional extras is not installed; the message names the
    extra and the command that installs it."""
