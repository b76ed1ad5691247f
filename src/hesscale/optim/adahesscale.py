"""AdaHesScale and AdaHesScaleGN: Adam-style optimizers preconditioned by HesScale diagonals."""

from __future__ import annotations

from torch import Tensor

from hesscale.engine import backward as diagonal_backward
from hesscale.extensions import HesScale, HesScaleGN
from hesscale.optim.base import ExtensionAdam


class AdaHesScale(ExtensionAdam):
    r"""Adam with the squared gradient replaced by a HesScale Hessian-diagonal estimate.

    ``AdaHesScale(params, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
    maximize=False, preconditioner='adam', delta=None, max_scale=1.0, clip=<variant>,
    floor=<variant>, variant='floored', on_nonfinite='raise', foreach=None)``

    The algorithm (defaults: preconditioner 'adam', variant 'floored'), with :math:`g_t` the
    gradient and :math:`h_t` the HesScale diagonal of step :math:`t` (``p.hesscale``):

    .. math::
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) h_t^2, \qquad
        w_t = \beta_2 w_{t-1} + (1 - \beta_2) g_t^2, \\
        \hat m_t &= m_t / (1 - \beta_1^t), \qquad \hat v_t = v_t / (1 - \beta_2^t), \qquad
        \hat w_t = w_t / (1 - \beta_2^t), \\
        D_t &= \max\bigl(\sqrt{\hat v_t},\ \mathrm{floor} \cdot \sqrt{\hat w_t}\bigr), \\
        p_t &= p_{t-1} (1 - \eta \lambda) - \eta\, \hat m_t / (D_t + \epsilon).

    :math:`\hat m / \sqrt{\hat v}` is a Newton-like step (:math:`\sqrt{\hat v} \approx
    |h|`); the floor ties the curvature to the gradient's scale, so that no coordinate moves
    further than Adam's step at the same lr, :math:`\eta \hat m / \sqrt{\hat w}`, where
    :math:`|h|` is small beside :math:`|g|` (the directions where a Newton step explodes: on a
    GPT, the attention and LayerNorm weights at initialisation; see docs/studies/optimizers.md).
    Where the curvature is large, the step is the smaller, Newton-like one.

    Variants (``variant=``), each setting ``clip`` and ``floor`` unless they are given:

    - ``'floored'`` (default): floor 1, no clip, as above.
    - ``'clipped'``: no floor; each coordinate's step clamped to
      :math:`\eta \cdot \mathrm{clamp}(\hat m / (\sqrt{\hat v} + \epsilon), -1, 1)`, as in
      Sophia (Liu et al. 2023): at most lr per coordinate.
    - ``'paper'``: the published AdaHesScale (Elsayed & Mahmood, arXiv:2210.11639), no floor
      and no clip: :math:`p_t = p_{t-1} (1 - \eta\lambda) - \eta \hat m_t / (\sqrt{\hat
      v_t} + \epsilon)`. Use it to reproduce published results.

    The other preconditioners replace :math:`h^2` and :math:`\sqrt{\cdot}` (see
    hesscale.optim.update for every formula, the trust region included).

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
    clears the diagonals with the gradients. ``state_dict()`` / ``load_state_dict()`` hold m,
    v (``exp_avg``, ``exp_curvature``), w (``exp_avg_sq``, with a floor) and the step count.

    Args:
        params: parameters or param groups, as for any torch.optim optimizer.
        lr: step size :math:`\eta`. The default, 3e-4, suits streams of single examples
            (benchmarks/default_lr.py); with mini-batches, 1e-3 to 1e-2, as for Adam (on the
            study's GPT, ResNet, LSTM and MLP: docs/studies/optimizers.md).
        betas: :math:`(\beta_1, \beta_2)`, decay rates of the moving averages of g and of
            c(h) (and of g^2 with a floor).
        eps: :math:`\epsilon`, added to the denominator.
        weight_decay: :math:`\lambda`, decoupled (AdamW-style) weight decay.
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
        clip: clamp each coordinate's m_hat / (D + eps) to [-clip, clip] (None: no clamp).
            Default: set by ``variant``.
        floor: D = max(d(v_hat), floor * sqrt(w_hat)) (None: D = d(v_hat)). Default: set by
            ``variant``.
        variant: 'floored' (default), 'clipped' or 'paper' (above).
        on_nonfinite: 'raise' (default) raises NonFiniteError when a gradient or diagonal holds
            inf/NaN; 'skip' warns and skips the whole step, leaving parameters and state as they
            were.
        foreach: update all parameters of a group with torch's multi-tensor operations (None,
            the default, and True) or one parameter at a time (False); the same arithmetic.

    Raises:
        ValueError: an invalid hyperparameter or variant, named in the message.
        HesScaleError: ``step()`` found a gradient without a fresh diagonal.
        NonFiniteError: a gradient or diagonal holds inf/NaN (with ``on_nonfinite='raise'``).
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
    r"""AdaHesScale driven by HesScaleGN (Gauss-Newton) diagonals, in ``p.hesscale_gn``.

    The update of AdaHesScale (same math, variants and defaults) with :math:`h_t` the
    HesScaleGN diagonal, which is >= 0 for convex losses. Same arguments, returns and errors,
    with ``hesscale.backward(loss, gn=True)``;
    ``opt.method`` is a HesScaleGN() instance. When the loss is not one HesScaleGN recognises
    (cross-entropy, NLL, MSE, BCE, ...), name the network output yourself:
    ``hesscale.backward(loss, gn=True, output=out)``, then ``opt.step()``.
    """

    savefield = "hesscale_gn"
    gn = True

    def _make_method(self) -> HesScaleGN:
        return HesScaleGN()
