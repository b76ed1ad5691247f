"""Adaptors for elementwise activations and the softmax family."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from hesscale.extensions.base import ModuleAdaptor
from hesscale.rules import elementwise as ew
from hesscale.rules.softmax import log_softmax_input, softmax_input


class Elementwise(ModuleAdaptor):
    """h_x = sigma'(x)^2 h_z + sigma''(x) g_z, with (sigma', sigma'') from ``derivatives``."""

    def __init__(self, derivatives: Callable[[nn.Module, Tensor], ew.Derivatives]) -> None:
        super().__init__()
        self.derivatives = derivatives

    def input_diag(self, module, h_out, g_out):
        first, second = self.derivatives(module, module.input0)
        return ew.elementwise_input(h_out, g_out, first, second)


def _softmax_dim(module: nn.Module, x: Tensor) -> int:
    """torch's rule for dim=None (legacy implicit dimension)."""
    if module.dim is not None:
        return module.dim
    return 0 if x.dim() in (0, 1, 3) else 1


class Softmax(ModuleAdaptor):
    def input_diag(self, module, h_out, g_out):
        dim = _softmax_dim(module, module.input0)
        return softmax_input(module.output, h_out, g_out, dim)


class LogSoftmax(ModuleAdaptor):
    """Keeps its second-order term also in HesScaleGN (see HesScaleGN's docstring)."""

    keeps_second_order = True

    def input_diag(self, module, h_out, g_out):
        dim = _softmax_dim(module, module.input0)
        return log_softmax_input(module.output.exp(), h_out, g_out, dim)


ADAPTORS = {
    nn.ReLU: Elementwise(lambda m, x: ew.relu_derivatives(x)),
    nn.LeakyReLU: Elementwise(lambda m, x: ew.leaky_relu_derivatives(x, m.negative_slope)),
    nn.Sigmoid: Elementwise(lambda m, x: ew.sigmoid_derivatives(x)),
    nn.Tanh: Elementwise(lambda m, x: ew.tanh_derivatives(x)),
    nn.ELU: Elementwise(lambda m, x: ew.elu_derivatives(x, m.alpha)),
    nn.SELU: Elementwise(lambda m, x: ew.selu_derivatives(x)),
    nn.Softplus: Elementwise(lambda m, x: ew.softplus_derivatives(x, m.beta, m.threshold)),
    nn.LogSigmoid: Elementwise(lambda m, x: ew.logsigmoid_derivatives(x)),
    nn.SiLU: Elementwise(lambda m, x: ew.silu_derivatives(x)),
    nn.GELU: Elementwise(lambda m, x: ew.gelu_derivatives(x, m.approximate)),
    nn.Softmax: Softmax(),
    nn.LogSoftmax: LogSoftmax(),
}
