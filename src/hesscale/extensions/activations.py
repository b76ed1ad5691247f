"""Adaptors for elementwise activations and the softmax family."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from hesscale.extensions.base import ModuleAdaptor
from hesscale.rules import elementwise as ew
from hesscale.rules.precision import exp_without_subnormals
from hesscale.rules.softmax import log_softmax_input, softmax_input


class Elementwise(ModuleAdaptor):
    """h_x = sigma'(x)^2 h_z + sigma''(x) g_z, with (sigma', sigma'') from ``derivatives``,
    a function of the module and its input (or, with ``of_output=True``, of its output, which
    saves recomputing the activation)."""

    def __init__(
        self,
        derivatives: Callable[[nn.Module, Tensor], ew.Derivatives],
        of_output: bool = False,
    ) -> None:
        super().__init__()
        self.derivatives = derivatives
        self.of_output = of_output

    def input_diag(self, module, h_out, g_out):
        first, second = self.derivatives(module, module.output if self.of_output else module.input0)
        return ew.elementwise_input(h_out, g_out, first, second)


def softmax_dim(module: nn.Module, x: Tensor) -> int:
    """torch's rule for dim=None (legacy implicit dimension)."""
    if module.dim is not None:
        return module.dim
    return 0 if x.dim() in (0, 1, 3) else 1


class ReLU(ModuleAdaptor):
    def input_diag(self, module, h_out, g_out):
        return ew.relu_input(h_out, module.output)  # output > 0 exactly where input > 0


class Softmax(ModuleAdaptor):
    def input_diag(self, module, h_out, g_out):
        dim = softmax_dim(module, module.input0)
        return softmax_input(module.output, h_out, g_out, dim)


class LogSoftmax(ModuleAdaptor):
    """In HesScaleGN a LogSoftmax that feeds NLLLoss directly is part of that loss: it keeps its
    second-order term for NLLLoss's part of the gradient (see HesScaleGN's docstring)."""

    def second_order_gradient(self, ext, module, g_out):
        if ext.second_order:
            return g_out[0]
        return ext.take_log_prob_gradient(module.output)

    def input_diag(self, module, h_out, g_out):
        dim = softmax_dim(module, module.input0)
        return log_softmax_input(exp_without_subnormals(module.output), h_out, g_out, dim)


ADAPTORS = {
    nn.ReLU: ReLU(),
    nn.LeakyReLU: Elementwise(lambda m, x: ew.leaky_relu_derivatives(x, m.negative_slope)),
    nn.Sigmoid: Elementwise(lambda m, x: ew.sigmoid_derivatives(x)),
    nn.Tanh: Elementwise(lambda m, t: ew.tanh_derivatives_from_output(t), of_output=True),
    nn.ELU: Elementwise(lambda m, x: ew.elu_derivatives(x, m.alpha)),
    nn.SELU: Elementwise(lambda m, x: ew.selu_derivatives(x)),
    nn.Softplus: Elementwise(lambda m, x: ew.softplus_derivatives(x, m.beta, m.threshold)),
    nn.LogSigmoid: Elementwise(lambda m, x: ew.logsigmoid_derivatives(x)),
    nn.SiLU: Elementwise(lambda m, x: ew.silu_derivatives(x)),
    nn.GELU: Elementwise(lambda m, x: ew.gelu_derivatives(x, m.approximate)),
    nn.Softmax: Softmax(),
    nn.LogSoftmax: LogSoftmax(),
}
