"""Adaptors for Linear, shape operations, Dropout and BatchNorm (eval mode)."""

from __future__ import annotations

from torch import nn

from hesscale.extensions.base import ModuleAdaptor, UnsupportedModuleError, describe
from hesscale.rules import matmul, normalization, shape
from hesscale.rules.precision import upcast


class Linear(ModuleAdaptor):
    """z = x W^T + b, the engine's matrix product (rules.matmul) with b = W^T; leading dims
    of x act as a batch, whose entries the weight and the bias sum."""

    params = ("weight", "bias")

    def input_diag(self, module, h_out, g_out):
        return matmul.matmul_left(h_out, module.weight.mT)

    def weight(self, module, h_out):
        x = module.input0
        rows = (h_out.reshape(-1, h_out.shape[-1]), x.reshape(-1, x.shape[-1]))
        return matmul.matmul_right(*rows, transposed=True).mT

    def bias(self, module, h_out):
        return upcast(h_out).reshape(-1, h_out.shape[-1]).sum(0)


class Identity(ModuleAdaptor):
    def input_diag(self, module, h_out, g_out):
        return h_out


class Flatten(ModuleAdaptor):
    def input_diag(self, module, h_out, g_out):
        return shape.reshape_input(h_out, module.input0.shape)


class ZeroPad2d(ModuleAdaptor):
    def input_diag(self, module, h_out, g_out):
        return shape.zero_pad_input(h_out, module.padding)


class Dropout(ModuleAdaptor):
    def input_diag(self, module, h_out, g_out):
        if not module.training or module.p == 0:
            return h_out
        if module.p == 1:
            return h_out.new_zeros(module.input0.shape)
        return shape.dropout_input(h_out, module.output, module.p)


class BatchNorm(ModuleAdaptor):
    params = ("weight", "bias")

    def check(self, module):
        super().check(module)
        uses_batch_statistics = module.training or module.running_var is None
        if uses_batch_statistics:
            raise UnsupportedModuleError(
                f"{describe(module)} normalises with statistics of the current batch (train "
                "mode, or track_running_stats=False), which couples all samples of the batch: "
                "its Hessian has no per-sample diagonal structure for HesScale to propagate. "
                "Call model.eval() for BatchNorm layers (they then use their running "
                "statistics), or use a normalisation that works per sample."
            )

    def input_diag(self, module, h_out, g_out):
        return normalization.batchnorm_eval_input(
            h_out, module.running_var, module.eps, module.weight
        )

    def weight(self, module, h_out):
        x_hat = normalization.batchnorm_eval_normalized(
            module.input0, module.running_mean, module.running_var, module.eps
        )
        return normalization.batchnorm_weight(h_out, x_hat)

    def bias(self, module, h_out):
        return normalization.batchnorm_bias(h_out)


ADAPTORS = {
    nn.Linear: Linear(),
    nn.Identity: Identity(),
    nn.Flatten: Flatten(),
    nn.ZeroPad2d: ZeroPad2d(),
    nn.Dropout: Dropout(),
    nn.BatchNorm1d: BatchNorm(),
    nn.BatchNorm2d: BatchNorm(),
    nn.BatchNorm3d: BatchNorm(),
}
