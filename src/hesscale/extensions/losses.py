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
        h = losses.mse_diag(m.input0, m.reduction)
        return (h, h)  # symmetric in prediction and target


class NLL(LossAdaptor):
    def input_diags(self, m):
        return (losses.nll_diag(m.input0),)


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
