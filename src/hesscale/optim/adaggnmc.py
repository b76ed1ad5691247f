"""AdaGGNMC: the Adam-style update preconditioned by BackPACK's Monte-Carlo GGN diagonal."""

from __future__ import annotations

from backpack.extensions import DiagGGNMC

from hesscale.optim.base import ExtensionAdam, ParamsT, adam_defaults


class AdaGGNMC(ExtensionAdam):
    """Adam with the squared gradient replaced by BackPACK's DiagGGNMC estimate (a baseline).

    ``opt.method`` is ``DiagGGNMC(mc_samples)``; the diagonal is read from ``p.diag_ggn_mc``.
    Usage, arguments and update exactly as AdaHesScale (see its docstring), with
    ``mc_samples``: the number of Monte-Carlo samples of the GGN per backward pass.
    """

    savefield = "diag_ggn_mc"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        mc_samples: int = 1,
        maximize: bool = False,
        preconditioner: str = "adam",
        delta: float | None = None,
        max_scale: float = 1.0,
        on_nonfinite: str = "raise",
    ) -> None:
        if not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"AdaGGNMC: invalid mc_samples={mc_samples!r}; need an int >= 1.")
        defaults = adam_defaults(
            lr,
            betas,
            eps,
            weight_decay,
            maximize,
            preconditioner=preconditioner,
            delta=delta,
            max_scale=max_scale,
            on_nonfinite=on_nonfinite,
        )
        super().__init__(params, defaults, DiagGGNMC(mc_samples=mc_samples))
