"""UPGD: utility-based perturbed gradient descent (Elsayed and Mahmood, ICLR 2024), for
continual learning: it protects useful weights from change and perturbs the others.

The utility of a weight w is the loss increase its removal would cause, in a second-order
Taylor model: U = -g w + 1/2 h w^2 (``utility="second"``, h from HesScale) or U = -g w
(``utility="first"``), with g the gradient and h the Hessian diagonal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from hesscale import accumulation
from hesscale.engine import backward as diagonal_backward
from hesscale.errors import HesScaleError

UTILITIES = ("first", "second")
DIAGONALS = ("hesscale", "hesscale_gn")


class UPGD(torch.optim.Optimizer):
    """UPGD (global utility scaling), a torch.optim optimizer.

    Each step, per weight: U as in the module docstring; its trace
    u <- beta_utility * u + (1 - beta_utility) * U, bias-corrected u_hat = u / (1 -
    beta_utility^t); the scaled utility s = sigmoid(u_hat / eta), eta the largest u_hat over
    all parameters of the optimizer (a positive floor when none is positive); then
    w <- w * (1 - lr * weight_decay) - lr * (g + noise) * (1 - s), noise ~ N(0, sigma^2).
    Weights of high utility (s near 1) barely move; those of low utility take a perturbed
    gradient step, which keeps the network plastic.

    The second-order utility reads the diagonal ``p.hesscale`` (``diagonal="hesscale_gn"``:
    ``p.hesscale_gn``) that ``hesscale.backward(loss)`` (``gn=True`` for the GN one) or the
    BackPACK extension left beside the gradient::

        opt = UPGD(model.parameters(), lr=0.01)
        opt.zero_grad()
        hesscale.backward(loss_fn(model(x), y))
        opt.step()

    or ``opt.step(closure)`` with a closure that returns the loss (without calling backward):
    the optimizer then runs the backward pass it needs. The first-order utility needs only
    ``loss.backward()``.

    Args:
        params: parameters or param groups.
        lr: step size. At zero utility, s = 1/2: the step is half of SGD's with this lr.
        weight_decay: w *= 1 - lr * weight_decay each step.
        beta_utility: decay of the utility trace.
        sigma: standard deviation of the perturbation.
        utility: "second" (HesScale) or "first".
        diagonal: which diagonal the second-order utility reads: "hesscale" or "hesscale_gn".
        generator: the torch.Generator for the noise (None: torch's global one).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        weight_decay: float = 0.0,
        beta_utility: float = 0.999,
        sigma: float = 0.001,
        utility: str = "second",
        diagonal: str = "hesscale",
        generator: torch.Generator | None = None,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"UPGD: lr={lr!r} must be >= 0.")
        if not weight_decay >= 0.0:
            raise ValueError(f"UPGD: weight_decay={weight_decay!r} must be >= 0.")
        if not 0.0 <= beta_utility < 1.0:
            raise ValueError(f"UPGD: beta_utility={beta_utility!r} must be in [0, 1).")
        if not sigma >= 0.0:
            raise ValueError(f"UPGD: sigma={sigma!r} must be >= 0.")
        if utility not in UTILITIES:
            raise ValueError(f"UPGD: utility={utility!r}; use one of {UTILITIES}.")
        if diagonal not in DIAGONALS:
            raise ValueError(f"UPGD: diagonal={diagonal!r}; use one of {DIAGONALS}.")
        defaults = dict(lr=lr, weight_decay=weight_decay, beta_utility=beta_utility, sigma=sigma)
        super().__init__(params, defaults)
        self.utility, self.diagonal, self.generator = utility, diagonal, generator

    def _curvature(self, p: Tensor) -> Tensor:
        """The fresh diagonal beside ``p.grad`` (an error if there is none)."""
        h = getattr(p, self.diagonal, None)
        if h is None or not accumulation.fresh(p, self.diagonal):
            gn = ", gn=True" if self.diagonal == "hesscale_gn" else ""
            raise HesScaleError(
                f"UPGD(utility='second'): a parameter of shape {tuple(p.shape)} has a gradient "
                f"but no fresh p.{self.diagonal}: run hesscale.backward(loss{gn}) instead of "
                "loss.backward() (or pass a closure to step())."
            )
        return h

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update; with a closure (returning the loss, without backward), the optimizer
        clears the gradients, runs the closure and the backward pass first."""
        loss = None
        if closure is not None:
            self.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = closure()
                if self.utility == "second":
                    diagonal_backward(loss, gn=self.diagonal == "hesscale_gn")
                else:
                    loss.backward()
        traces = []
        for group in self.param_groups:
            beta = group["beta_utility"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["utility"] = torch.zeros_like(p)
                state["step"] += 1
                utility = -p.grad * p
                if self.utility == "second":
                    utility = utility + 0.5 * self._curvature(p) * p.square()
                state["utility"].mul_(beta).add_(utility, alpha=1 - beta)
                traces.append((p, group, state["utility"] / (1 - beta ** state["step"])))
        if not traces:
            return loss
        largest = torch.stack([t.max() for _, _, t in traces]).max()
        eta = largest.clamp_min(torch.finfo(largest.dtype).tiny)
        for p, group, trace in traces:
            protection = torch.sigmoid(trace / eta)
            noise = torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype)
            step = (p.grad + group["sigma"] * noise) * (1 - protection)
            p.mul_(1 - group["lr"] * group["weight_decay"]).add_(step, alpha=-group["lr"])
        return loss
