"""The BackPACK adaptor: bookkeeping shared by every module type. No formulas live here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from backpack.extensions.module_extension import ModuleExtension
from torch import Tensor, nn

from hesscale.errors import HesScaleError, UnsupportedModuleError  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from hesscale.extensions.hesscale import DiagonalBackprop


def describe(module: nn.Module) -> str:
    return f"{type(module).__name__} ({module})"


class ModuleAdaptor(ModuleExtension):
    """Maps one nn.Module type to its rules; subclass it for your own layer and register it
    with ``HesScale().set_module_extension(MyLayer, MyAdaptor())``.

    Subclasses implement ``input_diag`` (the diagonal w.r.t. the module's input, from the
    diagonal ``h_out`` and gradient ``g_out`` w.r.t. its output; ``g_out`` is None in the
    Gauss-Newton variant) and one method per name in ``params`` (the diagonal w.r.t. that
    parameter); ``check`` rejects configurations without a rule. The module's forward input and
    output are ``module.input0`` and ``module.output``. ``__call__`` does the bookkeeping.
    """

    params: tuple[str, ...] = ()

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

    def second_order_gradient(
        self, ext: DiagonalBackprop, module: nn.Module, g_out: tuple[Tensor, ...]
    ) -> Tensor | None:
        """The gradient ``input_diag`` weights the module's own curvature with: all of it in
        HesScale, none (None) in the Gauss-Newton variant."""
        return g_out[0] if ext.second_order else None

    def __call__(self, ext: DiagonalBackprop, module: nn.Module, g_inp, g_out) -> None:
        x, output = ext.stored_io(module)
        self.check(module)
        h_out = ext.take_quantity(module, output)
        with torch.no_grad():
            for name in self.params:
                param = getattr(module, name, None)
                if param is not None and param.requires_grad:
                    ext.add_to_parameter(param, getattr(self, name)(module, h_out))
            if x.requires_grad:
                g = self.second_order_gradient(ext, module, g_out)
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
        ext.stored_io(module)
        self.check(module)
        ext.start_loss(module, g_out[0])
        with torch.no_grad():
            for i, h in enumerate(self.input_diags(module)):
                x = getattr(module, f"input{i}")
                if h is not None and isinstance(x, Tensor) and x.requires_grad:
                    ext.put_quantity(x, h)
