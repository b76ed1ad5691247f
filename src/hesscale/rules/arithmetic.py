"""Elementwise operations of two tensors (broadcast against each other).

Each output entry depends on one entry of each input, so J is diagonal per input (after
broadcasting; the engine sums broadcast copies) and

    h_x = (dz/dx)^2 h_z + (d^2 z / dx^2) g_z

with the other input held fixed. Squares and products are computed in float32 where float16
takes part (rules.precision).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hesscale.rules.precision import promote


def product_factor(h_out: Tensor, other: Tensor) -> Tensor:
    """z = x * y: h_x = y^2 h_z (z is linear in x), as (h_z y) y: 0 where h_z is 0, also where
    y^2 overflows."""
    h_out, other = promote(h_out, other)
    return h_out * other * other


def complex_product_factor(h_out: Tensor, other: Tensor, complex_input: bool) -> Tensor:
    """z = x * y with z complex, the diagonal of a complex tensor carried as (diagonal of the
    real parts) + i (diagonal of the imaginary parts). Re z = Re x Re y - Im x Im y and
    Im z = Re x Im y + Im x Re y, so

        h_{Re x} = (Re y)^2 h_Re + (Im y)^2 h_Im,    h_{Im x} = (Im y)^2 h_Re + (Re y)^2 h_Im;

    for a real x (``complex_input`` False) the first alone, a real tensor. A real y: h_z y^2."""
    if not other.is_complex():
        return product_factor(h_out, other)
    real, imag = other.real, other.imag
    h_real, h_imag = h_out.real, h_out.imag
    first = h_real * real * real + h_imag * imag * imag
    if not complex_input:
        return first
    return torch.complex(first, h_real * imag * imag + h_imag * real * real)


def quotient_numerator(h_out: Tensor, denominator: Tensor) -> Tensor:
    """z = x / y: h_x = h_z / y^2 (z is linear in x)."""
    h_out, denominator = promote(h_out, denominator)
    return h_out / denominator.square()


def quotient_denominator(
    h_out: Tensor | None, g_out: Tensor | None, quotient: Tensor, denominator: Tensor
) -> Tensor | None:
    """z = x / y: dz/dy = -z / y and d^2z/dy^2 = 2 z / y^2, so
    h_y = (z / y)^2 h_z + 2 (z / y^2) g_z."""
    h_out, g_out, quotient, denominator = promote(h_out, g_out, quotient, denominator)
    ratio = quotient / denominator
    h_in = None if h_out is None else h_out * ratio.square()
    if g_out is None:
        return h_in
    curvature = 2 * g_out * ratio / denominator
    return curvature if h_in is None else h_in + curvature


def power_base_derivatives(x: Tensor, exponent: Tensor) -> tuple[Tensor, Tensor]:
    """z = x^y as a function of the base x: dz/dx = y x^(y-1), d^2z/dx^2 = y (y-1) x^(y-2);
    zero where y = 0 (torch's gradient there)."""
    first = torch.where(exponent == 0, 0.0, exponent * x.pow(exponent - 1))
    second = torch.where(
        (exponent == 0) | (exponent == 1), 0.0, exponent * (exponent - 1) * x.pow(exponent - 2)
    )
    return first, second


def power_exponent_derivatives(
    base: Tensor | float, exponent: Tensor, result: Tensor
) -> tuple[Tensor, Tensor]:
    """z = b^y as a function of the exponent y: dz/dy = z log b, d^2z/dy^2 = z log(b)^2;
    zero where b = 0 and y >= 0 (torch's gradient there)."""
    base = torch.as_tensor(base, dtype=result.dtype, device=result.device)
    log_base = torch.log(base)
    first = result * log_base
    zero = (base == 0) & (exponent >= 0)
    return torch.where(zero, 0.0, first), torch.where(zero, 0.0, first * log_base)


def xlogy_derivatives(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """z = x log y (0 where x = 0): dz/dx = log y (0 where x = 0, as torch), z is linear in x;
    dz/dy = x / y, d^2z/dy^2 = -x / y^2. Returns (dz/dx, dz/dy, d^2z/dy^2)."""
    ratio = x / y
    return torch.xlogy(x != 0, y), ratio, -ratio / y


def atan2_derivatives(y: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """z = atan2(y, x) with r = x^2 + y^2: dz/dy = x / r, dz/dx = -y / r,
    d^2z/dy^2 = -2 x y / r^2 = -d^2z/dx^2. Returns (dz/dy, d^2z/dy^2, dz/dx, d^2z/dx^2)."""
    r = x.square() + y.square()
    curvature = -2 * x * y / r.square()
    return x / r, curvature, -y / r, -curvature


def hypot_derivatives(x: Tensor, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """z = sqrt(x^2 + y^2): dz/dx = x / z, d^2z/dx^2 = y^2 / z^3 (and x, y swapped); 0 where
    z = 0 (torch's gradient there)."""
    safe = torch.where(z == 0, 1.0, z)
    zero = z == 0
    d_x, d_y = (x / safe).masked_fill(zero, 0), (y / safe).masked_fill(zero, 0)
    return d_x, d_y.square() / safe, d_y, d_x.square() / safe
