"""Exact Hessian diagonals of losses w.r.t. their (network-output) inputs.

These start the backward recursion. With 'mean' reduction each is divided by what torch
divides the loss by; with 'sum' it is not. Where torch's 'mean' divides by zero (an empty batch,
or every target ignored) the loss is NaN and its gradients are zero; the diagonals are then zero
too, like the gradients.

Torch broadcasts some arguments against each other (MSELoss's target, GaussianNLLLoss's target
and variance): the loss then sums over the broadcast shape, so an entry copied to several
positions collects the curvature of each copy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesscale.rules.precision import promote, upcast, working_dtype
from hesscale.rules.softmax import complement


def _reduce_scale(reduction: str, normaliser: Tensor | float) -> Tensor | float:
    """1 / normaliser for 'mean' (0 where the normaliser is 0), 1 for 'sum'."""
    if reduction == "mean":
        if isinstance(normaliser, Tensor):
            return torch.where(normaliser != 0, 1.0 / normaliser, 0.0)
        return 1.0 / normaliser if normaliser else 0.0
    if reduction == "sum":
        return 1.0
    raise ValueError(f"reduction={reduction!r} is not supported; use 'mean' or 'sum'")


def cross_entropy_diag(
    logits: Tensor,
    target: Tensor,
    reduction: str = "mean",
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Softmax cross-entropy, classes along dim 1: h = c * (p - p^2) / normaliser.

    The Hessian of -log p_c w.r.t. the logits is diag(p) - p p^T for every class c, so any
    mixture of classes (probability targets, label smoothing, class weights) only scales it by
    c = the total weight the loss puts on the log-probabilities of that position.
    """
    logits = upcast(logits)
    unbatched = logits.dim() == 1
    if unbatched:
        logits, target = logits.unsqueeze(0), target.unsqueeze(0)
    num_classes = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    class_weight = torch.ones(num_classes, dtype=logits.dtype, device=logits.device)
    if weight is not None:
        class_weight = weight.to(logits.dtype)
    per_class = class_weight.view(1, -1, *([1] * (logits.dim() - 2)))
    if target.is_floating_point():
        target = target.to(logits.dtype)
        smoothed = target * (1 - label_smoothing) + label_smoothing / num_classes
        coefficient = (smoothed * per_class).sum(1)
        normaliser = coefficient.new_tensor(float(coefficient.numel()))
    else:
        valid = target != ignore_index
        target_weight = class_weight[torch.where(valid, target, 0)] * valid
        coefficient = (1 - label_smoothing) * target_weight + valid * (
            label_smoothing / num_classes * class_weight.sum()
        )
        normaliser = target_weight.sum()
    h = coefficient.unsqueeze(1) * (probs * complement(probs, 1))
    h = h * _reduce_scale(reduction, normaliser)
    return h.squeeze(0) if unbatched else h


def mse_diag(prediction: Tensor, reduction: str = "mean", target: Tensor | None = None) -> Tensor:
    """(x - y)^2 summed or averaged over the broadcast shape of x and y: h = 2 c, where c is
    the number of copies of each entry of x in that shape, divided by the shape's numel for
    'mean'. Symmetric: ``mse_diag(y, reduction, x)`` is the diagonal w.r.t. the target."""
    size = prediction.numel()
    if target is not None:
        size = torch.broadcast_shapes(prediction.shape, target.shape).numel()
    copies = size // prediction.numel() if prediction.numel() else 0
    h = 2.0 * copies * _reduce_scale(reduction, size)
    return torch.full_like(prediction, h, dtype=working_dtype(prediction.dtype))


def nll_diag(log_probs: Tensor) -> Tensor:
    """NLLLoss is linear in its input, so h = 0; the curvature comes from the LogSoftmax."""
    return torch.zeros_like(log_probs)


def bce_with_logits_diag(
    logits: Tensor,
    target: Tensor,
    reduction: str = "mean",
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
) -> Tensor:
    """-w [q y log s + (1 - y) log(1 - s)], s = sigmoid(x), q = pos_weight:
    h = w s (1 - s) (q y + 1 - y). Torch requires ``target`` of the logits' shape and ``weight``,
    ``pos_weight`` that broadcast to it, so the loss has the logits' shape."""
    logits, target, weight, pos_weight = promote(logits, target, weight, pos_weight)
    s = torch.sigmoid(logits)
    h = s * (1 - s)
    if pos_weight is not None:
        h = h * (pos_weight * target + 1 - target)
    if weight is not None:
        h = h * weight
    h = h.expand_as(logits)
    return h * _reduce_scale(reduction, logits.numel())


def gaussian_nll_diag(
    mean: Tensor,
    target: Tensor,
    var: Tensor,
    reduction: str = "mean",
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """l = (log v + (mu - y)^2 / v) / 2 with v = max(var, eps) (torch clamps without gradient):
    h_mu = 1 / v and h_var = (mu - y)^2 / v^3 - 1 / (2 v^2), summed over the elements that
    share one variance when ``var`` broadcasts (torch's homoscedastic forms), and over the
    copies of the mean when ``target`` broadcasts it. ``var`` may be a number (no diagonal)."""
    if not isinstance(var, Tensor):
        var = torch.full_like(mean, float(var))
    mean, target, var = promote(mean, target, var)
    v = var.clamp(min=eps)
    if v.shape != mean.shape and v.shape == mean.shape[:-1]:
        v = v.unsqueeze(-1)
    loss_shape = torch.broadcast_shapes(mean.shape, target.shape, v.shape)
    scale = _reduce_scale(reduction, loss_shape.numel())
    h_mean = (1.0 / v).expand(loss_shape).sum_to_size(mean.shape) * scale
    h_v = ((mean - target).square() / v**3 - 0.5 / v.square()) * scale
    h_var = h_v.sum_to_size(v.shape).reshape(var.shape)  # h_v has the loss shape
    return h_mean, h_var


# derivatives of loss kernels w.r.t. each input, for the engine (h = first^2 h_z + second g_z)


def reduction_scale(reduction: int, numel: int) -> float:
    """What torch multiplies each element's loss by: 1/numel for 'mean' (NaN if empty), 1 for
    'sum' and 'none'. ``reduction`` is ATen's code: 0 none, 1 mean, 2 sum."""
    if reduction == 1:
        return 1.0 / numel if numel else float("nan")
    return 1.0


def mse_derivatives(prediction: Tensor, target: Tensor, scale: float) -> tuple[Tensor, float]:
    """c (x - y)^2 per element: dl/dx = 2 c (x - y), d^2l/dx^2 = 2 c (for y: the negative
    first derivative and the same second)."""
    return 2 * scale * (prediction - target), 2 * scale


def bce_with_logits_derivatives(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """l = -c w [q y log s + (1 - y) log(1 - s)], s = sigmoid(x), q = pos_weight:
    dl/dx = c w ((q y + 1 - y) s - q y), d^2l/dx^2 = c w (q y + 1 - y) s (1 - s)."""
    s = torch.sigmoid(logits)
    q_y = target if pos_weight is None else pos_weight * target
    mix = q_y + 1 - target
    factor = scale if weight is None else scale * weight
    return factor * (mix * s - q_y), factor * mix * s * (1 - s)


def bce_with_logits_target_derivative(
    logits: Tensor, weight: Tensor | None, pos_weight: Tensor | None, scale: float
) -> Tensor:
    """dl/dy = -c w (q log s - log(1 - s)); l is linear in y (d^2l/dy^2 = 0)."""
    log_s = torch.nn.functional.logsigmoid(logits)
    log_not_s = torch.nn.functional.logsigmoid(-logits)
    q_log_s = log_s if pos_weight is None else pos_weight * log_s
    factor = scale if weight is None else scale * weight
    return -factor * (q_log_s - log_not_s)


def binary_cross_entropy_derivatives(
    probs: Tensor, target: Tensor, weight: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """l = -c w [y log p + (1 - y) log(1 - p)] on probabilities p:
    dl/dp = c w (p - y) / (p (1 - p)), d^2l/dp^2 = c w (y / p^2 + (1 - y) / (1 - p)^2)."""
    factor = scale if weight is None else scale * weight
    not_p = 1 - probs
    first = factor * (probs - target) / (probs * not_p)
    second = factor * (target / probs.square() + (1 - target) / not_p.square())
    return first, second


def binary_cross_entropy_target_derivative(
    probs: Tensor, weight: Tensor | None, scale: float
) -> Tensor:
    """dl/dy = -c w log(p / (1 - p)); l is linear in the target y."""
    factor = scale if weight is None else scale * weight
    return -factor * torch.logit(probs)


def huber_derivatives(
    prediction: Tensor, target: Tensor, delta: float, scale: float
) -> tuple[Tensor, Tensor]:
    """c huber(x - y): with d = x - y, l = d^2 / 2 for |d| <= delta, else delta (|d| - delta/2):
    dl/dx = c clamp(d, -delta, delta), d^2l/dx^2 = c for |d| < delta, else 0 (for y: the
    negative first derivative and the same second)."""
    d = prediction - target
    second = (d.abs() < delta).to(d.dtype) * scale
    return scale * d.clamp(-delta, delta), second


def smooth_l1_derivatives(
    prediction: Tensor, target: Tensor, beta: float, scale: float
) -> tuple[Tensor, Tensor | float]:
    """c smooth_l1(x - y): with d = x - y, l = d^2 / (2 beta) for |d| < beta, else
    |d| - beta / 2: dl/dx = c clamp(d / beta, -1, 1), d^2l/dx^2 = c / beta for |d| < beta, else 0
    (beta = 0: the L1 loss, sign(d) and 0)."""
    d = prediction - target
    if beta == 0:
        return scale * torch.sign(d), 0.0
    second = (d.abs() < beta).to(d.dtype) * (scale / beta)
    return scale * (d / beta).clamp(-1, 1), second


def soft_margin_derivatives(
    prediction: Tensor, target: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """c log(1 + exp(-y x)): with s = sigmoid(y x), dl/dx = -c y (1 - s),
    d^2l/dx^2 = c y^2 s (1 - s)."""
    s = torch.sigmoid(target * prediction)
    not_s = 1 - s
    return -scale * target * not_s, scale * target.square() * s * not_s


def multi_margin_derivatives(
    scores: Tensor,
    target: Tensor,
    p: int,
    margin: float,
    weight: Tensor | None,
    scale: float,
) -> tuple[Tensor, Tensor | float]:
    """Per sample, l = c w_t / C sum_{j != t} max(0, margin - x_t + x_j)^p over the C classes
    (dim -1), t the target. With m_j = max(0, margin - x_t + x_j) and a_j = 1[m_j > 0]:
    p = 1: dl/dx_j = c w_t a_j / C, dl/dx_t = -sum_j of those; no curvature.
    p = 2: dl/dx_j = 2 c w_t m_j / C, dl/dx_t = -sum_j of those;
    d^2l/dx_j^2 = 2 c w_t a_j / C, d^2l/dx_t^2 = sum_j of those."""
    target = target.unsqueeze(-1)
    margins = margin - scores.gather(-1, target) + scores
    is_target = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, target, True)
    active = ((margins > 0) & ~is_target).to(scores.dtype)
    factor = scale / scores.shape[-1]
    if weight is not None:
        factor = factor * weight[target]
    if p == 1:
        per_class, curvature = factor * active, None
    else:
        per_class, curvature = 2 * factor * margins * active, 2 * factor * active
    first = torch.where(is_target, -per_class.sum(-1, keepdim=True), per_class)
    if curvature is None:
        return first, 0.0
    return first, torch.where(is_target, curvature.sum(-1, keepdim=True), curvature)
