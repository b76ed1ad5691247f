"""Elementwise activations z = sigma(x).

One rule for all of them,

    h_x = sigma'(x)^2 * h_z + sigma''(x) * g_z      (HesScaleGN: without the second term),

and, per activation, a function returning the pair (sigma'(x), sigma''(x)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hesscale.rules.precision import exp_without_subnormals, promote, upcast

Derivatives = tuple[Tensor, Tensor]


def elementwise_input(
    h_out: Tensor, g_out: Tensor | None, first: Tensor, second: Tensor | float
) -> Tensor:
    """h_x = first^2 * h_z + second * g_z, where first = sigma'(x), second = sigma''(x)."""
    h_out, g_out, first, second = promote(h_out, g_out, first, second)
    h_in = (h_out * first).mul_(first)  # first^2 * h_z, with one new tensor
    if g_out is None or (not isinstance(second, Tensor) and second == 0):
        return h_in
    if isinstance(second, Tensor):
        return h_in.addcmul_(second, g_out)  # + second * g_z, in the same pass
    return h_in.add_(g_out, alpha=second)


def relu_input(h_out: Tensor, x: Tensor) -> Tensor:
    """ReLU (sigma' = 1[x > 0], so sigma'^2 = sigma'; sigma'' = 0): h_x = h_z * 1[x > 0] in
    both variants. ``x`` may also be the output relu(x) (positive exactly where x is). One pass:
    ATen's kernel for ReLU's backward, which keeps its first argument where the second exceeds
    the threshold 0."""
    return torch.ops.aten.threshold_backward(h_out, x, 0)


def leaky_relu_derivatives(x: Tensor, negative_slope: float) -> Derivatives:
    """sigma' = 1 for x > 0, else the negative slope; sigma'' = 0."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x > 0, one, one * negative_slope), 0.0


def sigmoid_derivatives(x: Tensor) -> Derivatives:
    """s = sigmoid(x): sigma' = s(1 - s), sigma'' = s(1 - s)(1 - 2s), with 1 - s = sigmoid(-x)
    (exact where s is near 1, where 1 - s cancels)."""
    s, not_s = torch.sigmoid(x), torch.sigmoid(-x)
    first = s * not_s
    return first, first * (not_s - s)


def sigmoid_derivatives_from_output(s: Tensor) -> Derivatives:
    """The same from the output s = sigmoid(x), which the forward pass already computed (where
    s rounded to 1 this gives 0, as torch's own gradient does; sigmoid_derivatives does not)."""
    first = s - s.square()
    return first, first - 2 * s * first


def tanh_derivatives_from_output(t: Tensor) -> Derivatives:
    """From the output t = tanh(x): sigma' = 1 - t^2, sigma'' = -2t(1 - t^2)."""
    first = 1 - t.square()
    return first, -2 * t * first


def elu_derivatives(
    x: Tensor, alpha: float, scale: float = 1.0, input_scale: float = 1.0
) -> Derivatives:
    """scale * elu(input_scale * x): x > 0 gives (scale, 0); otherwise
    z = scale alpha (exp(input_scale x) - 1), sigma' = scale alpha input_scale exp(input_scale x)
    and sigma'' = input_scale * sigma'. (CELU: alpha, scale 1, input_scale 1 / alpha.)"""
    negative = scale * alpha * input_scale * torch.exp(input_scale * torch.clamp(x, max=0))
    positive = x > 0
    first = torch.where(positive, torch.full_like(x, scale), negative)
    second = torch.where(positive, torch.zeros_like(x), input_scale * negative)
    return first, second


def elu_derivatives_from_output(
    z: Tensor, alpha: float, scale: float = 1.0, input_scale: float = 1.0
) -> Derivatives:
    """The same from the output (in-place ELU): where z <= 0,
    scale alpha exp(input_scale x) = z + scale alpha."""
    negative = input_scale * (z + scale * alpha)
    positive = z > 0
    first = torch.where(positive, torch.full_like(z, scale), negative)
    second = torch.where(positive, torch.zeros_like(z), input_scale * negative)
    return first, second


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def selu_derivatives(x: Tensor) -> Derivatives:
    """selu(x) = SELU_SCALE * elu(x, SELU_ALPHA)."""
    return elu_derivatives(x, SELU_ALPHA, SELU_SCALE)


def softplus_derivatives(x: Tensor, beta: float, threshold: float) -> Derivatives:
    """softplus(x) = log(1 + exp(beta x)) / beta: sigma' = s, sigma'' = beta s (1 - s) with
    s = sigmoid(beta x); where beta x > threshold torch switches to the identity (1, 0)."""
    s = torch.sigmoid(beta * x)
    linear = beta * x > threshold
    first = torch.where(linear, torch.ones_like(x), s)
    second = torch.where(linear, torch.zeros_like(x), beta * s * torch.sigmoid(-beta * x))
    return first, second


def logsigmoid_derivatives(x: Tensor) -> Derivatives:
    """log(sigmoid(x)): sigma' = 1 - s, sigma'' = -s(1 - s) with s = sigmoid(x) and
    1 - s = sigmoid(-x)."""
    not_s = torch.sigmoid(-x)
    return not_s, -torch.sigmoid(x) * not_s


def silu_derivatives(x: Tensor) -> Derivatives:
    """x * s with s = sigmoid(x): sigma' = s + x s(1 - s), sigma'' = s(1 - s)(2 + x(1 - 2s))."""
    s, not_s = torch.sigmoid(x), torch.sigmoid(-x)
    ds = s * not_s
    return s + x * ds, ds * (2 + x * (not_s - s))


def gelu_derivatives(x: Tensor, approximate: str = "none") -> Derivatives:
    """gelu(x) = x Phi(x): sigma' = Phi + x phi, sigma'' = phi (2 - x^2).

    With approximate='tanh', gelu(x) = x (1 + tanh(u)) / 2, u = c (x + 0.044715 x^3),
    c = sqrt(2 / pi): sigma' = (1 + t) / 2 + x (1 - t^2) u' / 2 and
    sigma'' = (1 - t^2) u' + x (1 - t^2) (u'' - 2 t u'^2) / 2.

    Powers of x overflow float16 for moderate |x| (inf * 0 = NaN), so x is upcast first.
    """
    x = upcast(x)
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        u = c * (x + 0.044715 * x**3)
        du = c * (1 + 3 * 0.044715 * x.square())
        d2u = c * 6 * 0.044715 * x
        t = torch.tanh(u)
        sech2 = 1 - t.square()
        first = 0.5 * (1 + t) + 0.5 * x * sech2 * du
        second = sech2 * du + 0.5 * x * sech2 * (d2u - 2 * t * du.square())
        return first, second
    _check_gelu(approximate)
    x2 = x.square()
    scaled_pdf = x2.mul(-0.5).exp_()  # sqrt(2 pi) phi(x), subnormal only for |x| > 13
    first = torch.erf(x * (1 / math.sqrt(2.0))).add_(1).mul_(0.5)
    first.addcmul_(x, scaled_pdf, value=INVERSE_SQRT_TWO_PI)  # Phi + x phi
    return first, _scaled_gelu_second(x2, scaled_pdf).mul_(INVERSE_SQRT_TWO_PI)


INVERSE_SQRT_TWO_PI = 1 / math.sqrt(2 * math.pi)


def _scaled_gelu_second(x2: Tensor, scaled_pdf: Tensor | None = None) -> Tensor:
    """sqrt(2 pi) sigma'' = exp(-x^2 / 2) (2 - x^2) of GELU, from x^2, which it overwrites (no
    further full-size tensor); ``scaled_pdf``: exp(-x^2 / 2) where the caller has it (also
    overwritten)."""
    scaled_pdf = x2.mul(-0.5).exp_() if scaled_pdf is None else scaled_pdf
    return scaled_pdf.mul_(x2.sub_(2)).neg_()


def gelu_input(h_out: Tensor | None, g_out: Tensor | None, x: Tensor, approximate: str) -> Tensor:
    """h_x = sigma'(x)^2 h_z + sigma''(x) g_z for GELU (either may be None: zero, not both).

    sigma' comes from ATen's fused GELU backward kernel (its product with a tensor of ones),
    one pass where forming Phi + x phi from erf and exp takes five; sigma'' = phi (2 - x^2)
    (approximate='tanh': ``gelu_derivatives``), with the constant of phi folded into the last
    product."""
    h_out, g_out, x = promote(h_out, g_out, upcast(x))
    h_in = None
    if h_out is not None:
        ones = torch.ones((), dtype=x.dtype, device=x.device).expand_as(x)  # (no full tensor)
        first = torch.ops.aten.gelu_backward(ones, x, approximate=approximate)
        h_in = first.square_().mul_(h_out)
    if g_out is None:
        return h_in
    if approximate == "tanh":
        second, constant = gelu_derivatives(x, approximate)[1], 1.0
    else:
        _check_gelu(approximate)
        second, constant = _scaled_gelu_second(x.square()), INVERSE_SQRT_TWO_PI
    if h_in is None:
        return second.mul_(g_out).mul_(constant)
    return h_in.addcmul_(second, g_out, value=constant)


def _check_gelu(approximate: str) -> None:
    if approximate != "none":
        raise ValueError(f"GELU approximate={approximate!r} is not supported; use 'none' or 'tanh'")


def tanh_input(h_out: Tensor | None, g_out: Tensor | None, t: Tensor) -> Tensor:
    """h_x = (1 - t^2)^2 h_z - 2 t (1 - t^2) g_z for z = t = tanh(x) (from the output), each
    product by 1 - t^2 as ATen's fused tanh backward kernel (either of h_out, g_out may be
    None: zero, not both)."""
    h_out, g_out, t = promote(h_out, g_out, t)
    backward = torch.ops.aten.tanh_backward  # v -> v (1 - t^2)
    h_in = None if h_out is None else backward(backward(h_out, t), t)
    if g_out is None:
        return h_in
    second = backward(g_out, t).mul_(t)  # t (1 - t^2) g_z
    return second.mul_(-2) if h_in is None else h_in.add_(second, alpha=-2)


# elementwise functions of arithmetic (the engine's operations on any tensor) ---------------


def power_derivatives(x: Tensor, p: float) -> Derivatives:
    """x^p: sigma' = p x^(p-1), sigma'' = p (p - 1) x^(p-2)."""
    if p == 2:
        return 2 * x, 2.0
    if p == 1:
        return torch.ones_like(x), 0.0
    if p == 0:
        return torch.zeros_like(x), 0.0
    return p * x.pow(p - 1), p * (p - 1) * x.pow(p - 2)


def exp_derivatives_from_output(z: Tensor) -> Derivatives:
    """exp(x) = z: sigma' = sigma'' = z."""
    return z, z


def log_derivatives(x: Tensor) -> Derivatives:
    """log(x): sigma' = 1 / x, sigma'' = -1 / x^2."""
    inverse = x.reciprocal()
    return inverse, -inverse.square()


def sqrt_derivatives_from_output(z: Tensor) -> Derivatives:
    """sqrt(x) = z: sigma' = 1 / (2 z), sigma'' = -1 / (4 z^3)."""
    half_inverse = 0.5 / z
    return half_inverse, -2 * half_inverse.pow(3)


def rsqrt_derivatives_from_output(z: Tensor) -> Derivatives:
    """x^(-1/2) = z: sigma' = -z^3 / 2, sigma'' = 3 z^5 / 4."""
    z3 = z.pow(3)
    return -0.5 * z3, 0.75 * z3 * z.square()


def reciprocal_derivatives_from_output(z: Tensor) -> Derivatives:
    """1 / x = z: sigma' = -z^2, sigma'' = 2 z^3."""
    z2 = z.square()
    return -z2, 2 * z2 * z


def abs_derivatives(x: Tensor) -> Derivatives:
    """|x|: sigma' = sign(x) (0 at 0, as torch's gradient), sigma'' = 0."""
    return torch.sign(x), 0.0


def mish_derivatives(x: Tensor) -> Derivatives:
    """x tanh(softplus(x)): with t = tanh(softplus(x)), s = sigmoid(x), u = (1 - t^2) s:
    sigma' = t + x u, sigma'' = 2 u + x u (s (1 - s) / s - 2 t s) = u (2 + x (1 - s - 2 t s))."""
    t = torch.tanh(torch.nn.functional.softplus(x))
    s = torch.sigmoid(x)
    u = (1 - t.square()) * s
    return t + x * u, u * (2 + x * (1 - s - 2 * t * s))


LN2 = math.log(2.0)
LN10 = math.log(10.0)
TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def sin_derivatives(x: Tensor) -> Derivatives:
    """sin(x): sigma' = cos x, sigma'' = -sin x."""
    return torch.cos(x), -torch.sin(x)


def cos_derivatives(x: Tensor) -> Derivatives:
    """cos(x): sigma' = -sin x, sigma'' = -cos x."""
    return -torch.sin(x), -torch.cos(x)


def tan_derivatives_from_output(t: Tensor) -> Derivatives:
    """tan(x) = t: sigma' = 1 + t^2, sigma'' = 2 t (1 + t^2)."""
    first = 1 + t.square()
    return first, 2 * t * first


def sinh_derivatives(x: Tensor) -> Derivatives:
    """sinh(x): sigma' = cosh x, sigma'' = sinh x."""
    return torch.cosh(x), torch.sinh(x)


def cosh_derivatives(x: Tensor) -> Derivatives:
    """cosh(x): sigma' = sinh x, sigma'' = cosh x."""
    return torch.sinh(x), torch.cosh(x)


def atan_derivatives(x: Tensor) -> Derivatives:
    """atan(x): sigma' = 1 / (1 + x^2), sigma'' = -2 x / (1 + x^2)^2."""
    first = (1 + x.square()).reciprocal()
    return first, -2 * x * first.square()


def erf_derivatives(x: Tensor) -> Derivatives:
    """erf(x): sigma' = 2 / sqrt(pi) exp(-x^2), sigma'' = -2 x sigma'."""
    first = TWO_OVER_SQRT_PI * exp_without_subnormals(-x.square())
    return first, -2 * x * first


def erfc_derivatives(x: Tensor) -> Derivatives:
    """erfc(x) = 1 - erf(x): the negated derivatives of erf."""
    first, second = erf_derivatives(x)
    return -first, -second


def log1p_derivatives(x: Tensor) -> Derivatives:
    """log(1 + x): sigma' = 1 / (1 + x), sigma'' = -1 / (1 + x)^2."""
    inverse = (1 + x).reciprocal()
    return inverse, -inverse.square()


def log_base_derivatives(x: Tensor, base_log: float) -> Derivatives:
    """log(x) / log(b) (log2: b = 2, log10: b = 10): log's derivatives divided by log(b)."""
    inverse = x.reciprocal() / base_log
    return inverse, -inverse * x.reciprocal()


def expm1_derivatives_from_output(z: Tensor) -> Derivatives:
    """exp(x) - 1 = z: sigma' = sigma'' = z + 1."""
    first = z + 1
    return first, first


def exp2_derivatives_from_output(z: Tensor) -> Derivatives:
    """2^x = z: sigma' = z log 2, sigma'' = z log(2)^2."""
    first = z * LN2
    return first, first * LN2


def logit_derivatives(x: Tensor, eps: float | None) -> Derivatives:
    """log(x / (1 - x)): sigma' = 1 / (x (1 - x)), sigma'' = (2 x - 1) / (x (1 - x))^2. With
    ``eps`` torch clamps x to [eps, 1 - eps] first: both are zero outside (as torch's gradient)."""
    inverse = (x * (1 - x)).reciprocal()
    first, second = inverse, (2 * x - 1) * inverse.square()
    if eps is not None:
        outside = (x < eps) | (x > 1 - eps)
        first, second = first.masked_fill(outside, 0), second.masked_fill(outside, 0)
    return first, second


def hardswish_derivatives(x: Tensor) -> Derivatives:
    """x relu6(x + 3) / 6: sigma' = 0 below -3, x / 3 + 1/2 on [-3, 3], 1 above (torch's
    choice at the kinks); sigma'' = 1/3 on (-3, 3), 0 elsewhere."""
    first = torch.where(x < -3, 0.0, torch.where(x <= 3, x / 3 + 0.5, 1.0))
    return first, ((x > -3) & (x < 3)).to(x.dtype) / 3


def hardsigmoid_derivatives(x: Tensor) -> Derivatives:
    """relu6(x + 3) / 6: sigma' = 1/6 on (-3, 3), 0 elsewhere; sigma'' = 0."""
    return ((x > -3) & (x < 3)).to(x.dtype) / 6, 0.0


def rrelu_derivatives(
    x: Tensor, noise: Tensor, lower: float, upper: float, training: bool
) -> Derivatives:
    """Randomized leaky ReLU: in training, z = x * noise (noise holds each entry's slope, 1
    where x > 0); in evaluation a leaky ReLU of slope (lower + upper) / 2. sigma'' = 0."""
    if training and upper - lower > 1e-6:  # torch's test for a random slope
        return noise, 0.0
    return leaky_relu_derivatives(x, (lower + upper) / 2)


def glu_input(x: Tensor, h_out: Tensor | None, g_out: Tensor | None, dim: int) -> Tensor:
    """z = a * sigmoid(b) with (a, b) the two halves of x along ``dim``; s = sigmoid(b):
    h_a = s^2 h_z, h_b = (a s (1 - s))^2 h_z + a s (1 - s) (1 - 2 s) g_z (z is linear in a),
    concatenated back along ``dim``."""
    a, b = x.chunk(2, dim)
    s = torch.sigmoid(b)
    d_b = a * s * (1 - s)
    h_a = torch.zeros_like(a) if h_out is None else h_out * s.square()
    h_b = torch.zeros_like(b) if h_out is None else h_out * d_b.square()
    if g_out is not None:
        h_b = h_b + g_out * d_b * (1 - 2 * s)
    return torch.cat([h_a, h_b], dim)


def prelu_input(h_out: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """z = x for x > 0, w x otherwise (w broadcast against x): h_x = where(x > 0, 1, w)^2 h_z;
    z is linear in x (and in w) on each side."""
    return h_out * torch.where(x > 0, 1.0, weight).square()


def prelu_weight(h_out: Tensor, x: Tensor) -> Tensor:
    """h_w = where(x > 0, 0, x)^2 h_z, in x's shape (summed over the entries sharing w)."""
    return h_out * torch.where(x > 0, 0.0, x).square()


def erfinv_derivatives(x: Tensor) -> Derivatives:
    """z = erfinv(x): sigma' = sqrt(pi) / 2 exp(z^2), sigma'' = 2 z sigma'^2."""
    z = torch.erfinv(x)
    first = (math.sqrt(math.pi) / 2) * torch.exp(z.square())
    return first, 2 * z * first.square()


def lgamma_derivatives(x: Tensor) -> Derivatives:
    """log |Gamma(x)|: sigma' = digamma(x), sigma'' = trigamma(x) = polygamma(1, x)."""
    return torch.digamma(x), torch.polygamma(1, x)


def digamma_derivatives(x: Tensor) -> Derivatives:
    """digamma(x): sigma' = polygamma(1, x), sigma'' = polygamma(2, x)."""
    return torch.polygamma(1, x), torch.polygamma(2, x)
