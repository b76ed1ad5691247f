"""AdaGGNMC: the Adam-style update preconditioned by BackPACK's Monte-Carlo GGN diagonal."""

from __future__ import annotations

from typing import Any

from backpack.extensions import DiagGGNMC

from hesscale.optim.base import ExtensionAdam, ParamsT


class AdaGGNMC(ExtensionAdam):
    """Adam with the squared gradient replaced by BackPACK's DiagGGNMC estimate (a baseline).

    ``opt.method`` is ``DiagGGNMC(mc_samples)``; the diagonal is read from ``p.diag_ggn_mc``.
    Usage, arguments, variants (default ``'floored'``; ``variant='paper'`` for the published
    comparison) and update exactly as AdaHesScale (see its docstring and math), with h the
    Monte-Carlo GGN diagonal and ``mc_samples``: the number of Monte-Carlo samples of the GGN
    per backward pass.

    Raises:
        ValueError: an invalid hyperparameter (``mc_samples`` not an int >= 1, ...).
    """

    savefield = "diag_ggn_mc"
    diagonal_scales_with_loss = False  # BackPACK samples it from the loss function alone

    def __init__(self, params: ParamsT, *args: Any, mc_samples: int = 1, **options: Any) -> None:
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"AdaGGNMC: invalid mc_samples={mc_samples!r}; need an int >= 1.")
        self.mc_samples = mc_samples
        super().__init__(params, *args, **options)

    def _make_method(self) -> DiagGGNMC:
        return DiagGGNMC(mc_samples=self.mc_samples)
