"""Estimators computed with plain autograd: Hutchinson (AdaHessian), squared gradient, zero."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hesscale.estimators.base import Estimator, check_samples, clean_gradients, trainable
from hesscale.hook_warning import hook_warning_hidden
from hesscale.probes import rademacher


class Hutchinson(Estimator):
    """Hutchinson's estimator as in AdaHessian: diag(H) ~ mean over probes of v * (H v), with
    Rademacher probes v, whose expectation is exactly diag(H). Costs one backward pass with
    ``create_graph=True`` plus one Hessian-vector product per probe.

    ``generator`` (optional) makes the probes reproducible independently of torch's global RNG.
    """

    stochastic = True
    BATCHED_ABOVE = 16  # more probes than this: one vmapped (batched) backward pass

    def __init__(self, samples: int = 1, generator: torch.Generator | None = None) -> None:
        self.samples = check_samples(samples, "Hutchinson probes")
        self.generator = generator
        self.name = f"Hutchinson-{samples}"
        self.one_backprop = samples == 1

    def probes(self, params: list[nn.Parameter]) -> list[Tensor]:
        """One (samples, *p.shape) Rademacher tensor per parameter (drawn in that order)."""
        return [rademacher((self.samples, *p.shape), p, self.generator) for p in params]

    def estimate(self, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        params = trainable(model)
        with clean_gradients(params), hook_warning_hidden():  # the model may be extended
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            vs = self.probes(params)
            if self.samples > self.BATCHED_ABOVE:
                hvs = torch.autograd.grad(grads, params, grad_outputs=vs, is_grads_batched=True)
            else:  # a loop of products is faster than vmap for a few probes
                products = [
                    torch.autograd.grad(
                        grads, params, [v[i] for v in vs], retain_graph=i + 1 < self.samples
                    )
                    for i in range(self.samples)
                ]
                hvs = [torch.stack(hv) for hv in zip(*products, strict=True)]
        return [(v * hv).mean(0).detach() for v, hv in zip(vs, hvs, strict=True)]


class SquaredGradient(Estimator):
    """The squared gradient of the mini-batch loss, g * g (with batch size 1 the empirical
    Fisher diagonal of that example; Adam's second-moment input)."""

    name = "SquaredGrad"
    one_backprop = True

    def estimate(self, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        params = trainable(model)
        with clean_gradients(params), hook_warning_hidden():  # the model may be extended
            grads = torch.autograd.grad(loss_fn(model(x), y), params)
        return [g.detach().square() for g in grads]


class Zero(Estimator):
    """The zero diagonal: the floor any useful estimate must beat."""

    name = "Zero"

    def estimate(self, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        return [torch.zeros_like(p) for p in trainable(model)]
