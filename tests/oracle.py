"""Brute-force oracles: the HesScale definition computed with dense autograd Jacobians and
Hessians (float64, tiny shapes). Independent of hesscale.rules by construction."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call


def definition_diag(
    fn: Callable[[Tensor], Tensor], t: Tensor, h_out: Tensor, g_out: Tensor | None
) -> Tensor:
    """diag(J^T diag(h_out) J) + diag(d^2 <g_out, fn(t)> / dt^2) for J = d fn / dt.

    ``g_out=None`` gives the Gauss-Newton part only."""
    t = t.detach()
    jac = jacobian(fn, t).reshape(h_out.numel(), t.numel())
    h = (jac.square() * h_out.reshape(-1, 1)).sum(0)
    if g_out is not None:
        hess = hessian(lambda u: (g_out * fn(u)).sum(), t).reshape(t.numel(), t.numel())
        h = h + hess.diagonal()
    return h.reshape(t.shape)


def parameter_fn(module: nn.Module, name: str, x: Tensor) -> Callable[[Tensor], Tensor]:
    """The module's output as a function of one of its parameters."""
    return lambda p: functional_call(module, {name: p}, (x,))


def exact_loss_diag(loss_fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """The exact Hessian diagonal of a scalar function."""
    t = t.detach()
    return hessian(loss_fn, t).reshape(t.numel(), t.numel()).diagonal().reshape(t.shape)


def hesscale_by_definition(
    layers: list[nn.Module],
    loss_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    gauss_newton: bool,
    last_layer_in_loss: bool = False,
) -> dict[int, Tensor]:
    """The HesScale recursion through a chain of modules, every step by brute force.

    Starts at the loss's exact Hessian diagonal; returns {id(parameter): diagonal}.
    ``loss_fn`` maps the chain's output to the scalar loss. ``last_layer_in_loss``: the last
    layer belongs to the loss (a LogSoftmax feeding NLLLoss), so Gauss-Newton keeps its
    second-order term; every other layer loses it."""
    activations = [x.detach()]
    for layer in layers:
        activations.append(layer(activations[-1]).detach())
    out = activations[-1].requires_grad_(True)
    h = exact_loss_diag(loss_fn, out)
    results: dict[int, Tensor] = {}
    for i in reversed(range(len(layers))):
        layer, a_in = layers[i], activations[i].detach().requires_grad_(True)
        a_out = layer(a_in)
        # gradient of the loss w.r.t. this layer's output, through the rest of the chain
        rest = a_out.detach().requires_grad_(True)
        z = rest
        for later in layers[i + 1 :]:
            z = later(z)
        g = torch.autograd.grad(loss_fn(z), rest)[0]
        in_loss = last_layer_in_loss and i == len(layers) - 1
        g_used = None if gauss_newton and not in_loss else g
        for name, p in layer.named_parameters(recurse=False):
            if p.requires_grad:
                results[id(p)] = definition_diag(parameter_fn(layer, name, a_in), p, h, g_used)
        h = definition_diag(layer, a_in, h, g_used)
    return results


def assert_close(actual: Tensor, expected: Tensor) -> None:
    """Agreement with an oracle: 1e-10 relative (plus a float64 round-off floor)."""
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-13)
