"""AdaHesScale and AdaHesScaleGN: Adam-style optimizers preconditioned by HesScale diagonals."""

from __future__ import annotations

from torch import Tensor

from hesscale.engine import backward as diagonal_backward
from hesscale.extensions import HesScale, HesScaleGN
from hesscale.optim.base import ExtensionAdam


class AdaHesScale(ExtensionAdam):
    """Adam with the squared gradient replaced by a HesScale Hessian-diagonal estimate.

    ``AdaHesScale(params, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
    maximize=False, preconditioner='adam', delta=None, max_scale=1.0, on_nonfinite='raise')``

    Four ways to drive it, on any model:

    1. ``hesscale.backward`` instead of ``loss.backward()`` (use it when you own the loop;
       several backward passes before ``step()`` accumulate, as gradients do)::

           opt.zero_grad()
           hesscale.backward(loss_fn(model(x), y))   # AdaHesScaleGN: gn=True
           opt.step()

    2. Closure (shortest; one backward pass per step)::

           opt.step(lambda: loss_fn(model(x), y))

       The optimizer sets every gradient to None (no ``zero_grad()`` needed), calls the
       closure under grad mode, and runs ``hesscale.backward`` on the loss itself. A closure
       may instead run the backward pass itself; the optimizer notices the gradients and does
       not run it again.

    3. As in the original README, for ``backpack.extend``-ed models and losses::

           opt.zero_grad()
           loss = loss_fn(model(x), y)
           with backpack(opt.method):   # opt.method is the BackPACK extension it needs
               loss.backward()
           opt.step()

    4. Inside a framework that runs ``loss.backward()`` and ``optimizer.step()`` itself, e.g.
       Stable-Baselines3 (``policy_kwargs=dict(optimizer_class=AdaHesScale)``)::

           with hesscale.enable():
               model.learn(total_timesteps=100_000)

       Gradient clipping between backward and ``step()`` (``clip_grad_norm_``, as SB3 does)
       scales the gradient, hence the step; the diagonal, the loss's curvature, is not scaled.

    ``step()`` raises if a parameter has a gradient but no fresh diagonal (backward ran
    without HesScale, or a diagonal was already used by an earlier step). ``zero_grad()``
    clears the diagonals with the gradients.

    Update (see hesscale.optim.update for the exact formulas): m and v are exponential moving
    averages of the gradient and of c(h), h the diagonal; p -= lr * m_hat / (d(v_hat) + eps)
    with bias-corrected m_hat, v_hat.

    Args:
        params: parameters or param groups, as for any torch.optim optimizer.
        lr: step size. The default, 3e-4, trains the README's example networks on streams of
            single examples (benchmarks/default_lr.py; from 1e-3 up they sometimes diverge
            there: the first steps are about lr * g / |h| per entry, and |h| can be tiny) and a
            digits MLP with mini-batches of 32 (benchmarks/digits_mlp.py), where 1e-3 to 1e-2
            did better. With mini-batches, try 1e-3 to 1e-2; tune it as you would Adam's.
        betas: decay rates of the moving averages of g and of c(h).
        eps: added to the denominator.
        weight_decay: decoupled (AdamW-style) weight decay: p *= 1 - lr * weight_decay.
        maximize: maximize the objective instead (the gradient is negated; c(h) does not
            depend on the sign of h).
        preconditioner: 'adam' (v averages h^2, denominator sqrt(v_hat); the original
            AdaHesScale), 'sqrt' (v averages |h|, denominator sqrt(v_hat)) or 'newton' (v averages
            |h|, denominator v_hat).
        delta: trust region, off when None. When given, the whole step of each param group is
            scaled by min(max_scale, sqrt(2 * delta / sum(k_hat * u^2))), u the update above and
            k_hat the |h| estimate v_hat tracks (sqrt(v_hat) for 'adam', v_hat for 'sqrt' and
            'newton'): the diagonal quadratic model's predicted change is <= delta. Weight decay
            is not scaled.
        max_scale: the largest factor the trust region may scale a step by.
        on_nonfinite: 'raise' (default) raises NonFiniteError when a gradient or diagonal holds
            inf/NaN; 'skip' warns and skips the whole step, leaving parameters and state as they
            were.
    """

    savefield = "hesscale"
    gn = False
    how_to_backward = (
        "Run hesscale.backward(loss) instead of loss.backward() (any model), or "
        "`with backpack(opt.method): loss.backward()` (backpack.extend-ed models), before every "
        "step(), or call opt.step(closure) with a closure that returns the loss. When a "
        "framework's loop calls loss.backward() itself (e.g. Stable-Baselines3's learn()), run "
        "it under `with hesscale.enable():`."
    )

    def _backward(self, loss: Tensor) -> None:
        diagonal_backward(loss, gn=self.gn)

    def _make_method(self) -> HesScale:
        return HesScale()


class AdaHesScaleGN(AdaHesScale):
    """AdaHesScale driven by HesScaleGN (Gauss-Newton) diagonals, in ``p.hesscale_gn``.

    Same arguments and usage as AdaHesScale, with ``hesscale.backward(loss, gn=True)``;
    ``opt.method`` is a HesScaleGN() instance. When the loss is not one HesScaleGN recognises
    (cross-entropy, NLL, MSE, BCE, ...), name the network output yourself:
    ``hesscale.backward(loss, gn=True, output=out)``, then ``opt.step()``.
    """

    savefield = "hesscale_gn"
    gn = True

    def _make_method(self) -> HesScaleGN:
        return HesScaleGN()
