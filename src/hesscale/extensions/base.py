"""The BackPACK adaptor: bookkeeping shared by every module type. No formulas live here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from backpack.extensions.module_extension import ModuleExtension
from torch import Tensor, nn

from hesscale.errors import HesScaleError, UnsupportedModuleError

if TYPE_CHECKING:
    from hesscale.extensions.hesscale import DiagonalBackprop


def describe(module: nn.Module) -> str:
    return f"{type(module).__name__} ({module})"


def _stored_io(module: nn.Module) -> tuple[Tensor, Tensor]:
    if not hasattr(module, "output") or not hasattr(module, "input0"):
        raise HesScaleError(
            f"{describe(module)} has no stored forward input/output. A module instance that is "
            "called more than once in one forward pass (e.g. one nn.ReLU reused in two places) "
            "is not supported: BackPACK keeps only its last call. Use one instance per use, and "
            "run the forward pass with gradients enabled and outside backpack.disable()."
        )
    return module.input0, module.output


class ModuleAdaptor(ModuleExtension):
    """Maps one nn.Module type to its rules.

    Subclasses implement ``input_diag`` (the diagonal w.r.t. the module's input) and one method
    per name in ``params`` (the diagonal w.r.t. that parameter); ``check`` rejects
    configurations without a rule. ``__call__`` does the bookkeeping.
    """

    params: tuple[str, ...] = ()
    keeps_second_order: bool = False  # pass g_out to input_diag also in the Gauss-Newton variant

    def __init__(self) -> None:
        super().__init__(params=list(self.params))

    def check(self, module: nn.Module) -> None:
        """Raise UnsupportedModuleError for a configuration the rules do not cover."""
        if getattr(module, "inplace", False):
            raise UnsupportedModuleError(
                f"{describe(module)} is in-place (inplace=True): it overwrites the input that "
                "HesScale needs. Construct it with inplace=False."
            )

    def input_diag(self, module: nn.Module, h_out: Tensor, g_out: Tensor | None) -> Tensor:
        raise NotImplementedError

    def __call__(self, ext: DiagonalBackprop, module: nn.Module, g_inp, g_out) -> None:
        x, output = _stored_io(module)
        self.check(module)
        h_out = ext.take_quantity(module, output)
        with torch.no_grad():
            for name in self.params:
                param = getattr(module, name, None)
                if param is not None and param.requires_grad:
                    ext.add_to_parameter(param, getattr(self, name)(module, h_out))
            if x.requires_grad:
                g = g_out[0] if ext.second_order or self.keeps_second_order else None
                ext.put_quantity(x, self.input_diag(module, h_out, g))


class LossAdaptor(ModuleExtension):
    """Starts the recursion at a loss: the loss's exact Hessian diagonal w.r.t. its inputs."""

    def __init__(self) -> None:
        super().__init__(params=[])

    def check(self, module: nn.Module) -> None:
        if module.reduction not in ("mean", "sum"):
            raise UnsupportedModuleError(
                f"{describe(module)} has reduction={module.reduction!r}; HesScale needs a scalar "
                "loss: use reduction='mean' or 'sum'."
            )

    def input_diags(self, module: nn.Module) -> tuple[Tensor | None, ...]:
        """One diagonal per forward input (None where the loss has no curvature to pass on)."""
        raise NotImplementedError

    def __call__(self, ext: DiagonalBackprop, module: nn.Module, g_inp, g_out) -> None:
        _stored_io(module)
        self.check(module)
        g = g_out[0]
        if g.numel() != 1 or g.item() != 1:  # one scalar read instead of an elementwise test
            raise HesScaleError(
                f"The backward pass reached {describe(module)} with gradient {g!r}, not 1: "
                "the loss must be the last operation (call loss.backward() on the loss module's "
                "output itself, not on a scaled or transformed version of it)."
            )
        ext.start_backward(module.output)
        with torch.no_grad():
            for i, h in enumerate(self.input_diags(module)):
                x = getattr(module, f"input{i}")
                if h is not None and x.requires_grad:
                    ext.put_quantity(x, h)
