"""BL89 (Becker & LeCun 1989) as a BackPACK extension, a variant of HesScale.

BL89 backpropagates HesScale's diagonal recursion but takes the softmax family element-wise
(see hesscale.rules.bl89 for the math). Everything else (hidden layers, other losses) is
HesScale's own adaptor: only the modules with a softmax inside differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hesscale.errors import UnsupportedModuleError
from hesscale.extensions.activations import softmax_dim
from hesscale.extensions.base import LossAdaptor, ModuleAdaptor, describe
from hesscale.extensions.hesscale import DiagonalBackprop
from hesscale.rules import bl89


def _check_classes(module: nn.Module, x: Tensor, dim: int) -> None:
    if x.shape[dim] < 2:
        raise UnsupportedModuleError(
            f"BL89's element-wise softmax needs at least 2 classes along dim {dim}; "
            f"{describe(module)} got {x.shape[dim]}."
        )


class ElementwiseSoftmax(ModuleAdaptor):
    """nn.Softmax seen through the diagonal of its Jacobian."""

    def input_diag(self, module, h_out, g_out):
        x = module.input0
        dim = softmax_dim(module, x)
        _check_classes(module, x, dim)
        return bl89.softmax_input(x, h_out, g_out, dim)


class ElementwiseLogSoftmax(ModuleAdaptor):
    """nn.LogSoftmax seen through the diagonal of its Jacobian."""

    def input_diag(self, module, h_out, g_out):
        x = module.input0
        dim = softmax_dim(module, x)
        _check_classes(module, x, dim)
        return bl89.log_softmax_input(x, h_out, g_out, dim)


class ElementwiseCrossEntropy(LossAdaptor):
    """CrossEntropyLoss = NLLLoss(LogSoftmax(logits)), the log-softmax taken element-wise.

    NLL is linear in the log-probabilities (no curvature of its own); its gradient with
    respect to them carries the class weights, ignore_index and reduction.
    """

    def check(self, module):
        super().check(module)
        if module.label_smoothing != 0:
            raise UnsupportedModuleError(
                f"BL89 is implemented for CrossEntropyLoss without label smoothing; "
                f"{describe(module)} has label_smoothing={module.label_smoothing}."
            )
        if module.input1.is_floating_point():
            raise UnsupportedModuleError(
                f"BL89 is implemented for CrossEntropyLoss with class-index targets; "
                f"{describe(module)} got probability targets (a floating-point tensor)."
            )

    def input_diags(self, m):
        logits, target = m.input0, m.input1
        if logits.dim() == 1:
            logits, target = logits.unsqueeze(0), target.unsqueeze(0)
        _check_classes(m, logits, 1)
        with torch.enable_grad():
            log_probs = logits.detach().log_softmax(1).requires_grad_(True)
            nll = F.nll_loss(
                log_probs,
                target,
                weight=m.weight,
                ignore_index=m.ignore_index,
                reduction=m.reduction,
            )
            g_log_probs = torch.autograd.grad(nll, log_probs)[0]
        h = bl89.cross_entropy_input(logits, g_log_probs, dim=1)
        return (h.reshape(m.input0.shape),)


BL89_ADAPTORS: dict[type[nn.Module], object] = {
    nn.CrossEntropyLoss: ElementwiseCrossEntropy(),
    nn.Softmax: ElementwiseSoftmax(),
    nn.LogSoftmax: ElementwiseLogSoftmax(),
}


class BL89(DiagonalBackprop):
    """Becker & LeCun (1989): HesScale with softmax outputs taken element-wise; ``p.bl89``."""

    second_order = True

    def __init__(self) -> None:
        super().__init__(savefield="bl89")

    def __call__(self, module: nn.Module, g_inp, g_out) -> None:
        adaptor = BL89_ADAPTORS.get(type(module))
        if adaptor is None:
            super().__call__(module, g_inp, g_out)
        else:
            adaptor(self, module, g_inp, g_out)
