"""Adaptors that start the recursion at a loss module."""

from __future__ import annotations

from torch import nn

from hesscale.extensions.base import LossAdaptor
from hesscale.rules import losses


class CrossEntropy(LossAdaptor):
    def input_diags(self, m):
        h = losses.cross_entropy_diag(
            m.input0, m.input1, m.reduction, m.weight, m.ignore_index, m.label_smoothing
        )
        return (h,)


class MSE(LossAdaptor):
    def input_diags(self, m):
        prediction, target = m.input0, m.input1
        return (
            losses.mse_diag(prediction, m.reduction, target),
            losses.mse_diag(target, m.reduction, prediction),  # symmetric
        )


class NLL(LossAdaptor):
    """Linear in its input; a LogSoftmax feeding it directly supplies the curvature, and learns
    NLLLoss's own gradient (``g_inp``) for the Gauss-Newton variant."""

    def input_diags(self, m):
        return (losses.nll_diag(m.input0),)

    def __call__(self, ext, module, g_inp, g_out):
        super().__call__(ext, module, g_inp, g_out)
        if g_inp[0] is not None:
            ext.put_log_prob_gradient(module.input0, g_inp[0])


class BCEWithLogits(LossAdaptor):
    def input_diags(self, m):
        h = losses.bce_with_logits_diag(m.input0, m.input1, m.reduction, m.weight, m.pos_weight)
        return (h,)


class GaussianNLL(LossAdaptor):
    """loss(mean, target, var): diagonals for the mean head and the variance head."""

    def input_diags(self, m):
        h_mean, h_var = losses.gaussian_nll_diag(m.input0, m.input1, m.input2, m.reduction, m.eps)
        return (h_mean, None, h_var)


ADAPTORS = {
    nn.CrossEntropyLoss: CrossEntropy(),
    nn.MSELoss: MSE(),
    nn.NLLLoss: NLL(),
    nn.BCEWithLogitsLoss: BCEWithLogits(),
    nn.GaussianNLLLoss: GaussianNLL(),
}
