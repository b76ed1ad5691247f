"""BL89 (Becker & LeCun 1989) as a BackPACK extension, a variant of HesScale.

Becker & LeCun backpropagate the same diagonal recursion as HesScale,
h_x = sigma'(x)^2 h_z + sigma''(x) g_z through activations and h_x = h_z @ W^2 through linear
maps, but they treat every unit of the output layer element-wise. A softmax couples its
outputs; BL89 keeps only the diagonal of its Jacobian, i.e. it sees output i as a function of
input i alone with the other inputs held fixed:

    softmax(z)_i     = sigmoid(z_i - c_i),       c_i = logsumexp_{j != i} z_j,
    log_softmax(z)_i = logsigmoid(z_i - c_i).

The element-wise rule of hesscale.rules then applies with sigmoid's (or logsigmoid's)
derivatives at the shifted input. For cross-entropy with target t (log-softmax, then the
negative log-likelihood, linear in the log-probabilities with gradient -1 at t) this leaves
curvature p_t - p_t^2 on the target logit only, instead of the exact p - p^2 on every logit.

Everything else (hidden layers, other losses) is HesScale's own adaptor: only the modules
with a softmax inside differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hesscale.extensions.activations import softmax_dim
from hesscale.extensions.base import LossAdaptor, ModuleAdaptor, UnsupportedModuleError, describe
from hesscale.extensions.hesscale import DiagonalBackprop
from hesscale.rules import elementwise as ew


def shifted_logits(z: Tensor, dim: int) -> Tensor:
    """z_i - logsumexp_{j != i} z_j along ``dim``: the input at which softmax_i, as a function
    of z_i alone, is a sigmoid."""
    moved = z.movedim(dim, -1)
    size = moved.shape[-1]
    if size < 2:
        raise UnsupportedModuleError(
            f"BL89's element-wise softmax needs at least 2 classes along dim {dim}, got {size}"
        )
    mask = torch.eye(size, dtype=torch.bool, device=z.device)
    others = moved.unsqueeze(-2).masked_fill(mask, float("-inf")).logsumexp(-1)
    return (moved - others).movedim(-1, dim)


class ElementwiseSoftmax(ModuleAdaptor):
    """nn.Softmax seen through the diagonal of its Jacobian."""

    def input_diag(self, module, h_out, g_out):
        x = module.input0
        first, second = ew.sigmoid_derivatives(shifted_logits(x, softmax_dim(module, x)))
        return ew.elementwise_input(h_out, g_out, first, second)


class ElementwiseLogSoftmax(ModuleAdaptor):
    """nn.LogSoftmax seen through the diagonal of its Jacobian."""

    def input_diag(self, module, h_out, g_out):
        x = module.input0
        first, second = ew.logsigmoid_derivatives(shifted_logits(x, softmax_dim(module, x)))
        return ew.elementwise_input(h_out, g_out, first, second)


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
        first, second = ew.logsigmoid_derivatives(shifted_logits(logits, 1))
        h = ew.elementwise_input(torch.zeros_like(logits), g_log_probs, first, second)
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
