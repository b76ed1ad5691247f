"""Optimizers that consume Hessian-diagonal estimates, as torch.optim optimizers.

AdaHesScale / AdaHesScaleGN (HesScale, HesScaleGN diagonals) and the baselines AdaHessian
(Hutchinson) and AdaGGNMC (BackPACK's Monte-Carlo GGN diagonal). All share one Adam-style
update, hesscale.optim.update. Plain SGD and Adam come from torch.optim.
"""

from hesscale.optim.adaggnmc import AdaGGNMC
from hesscale.optim.adahesscale import AdaHesScale, AdaHesScaleGN
from hesscale.optim.adahessian import AdaHessian
from hesscale.optim.base import DiagonalAdam, NonFiniteError
from hesscale.optim.sophia import SophiaGN
from hesscale.optim.upgd import UPGD

__all__ = [
    "AdaHesScale",
    "AdaHesScaleGN",
    "AdaHessian",
    "AdaGGNMC",
    "SophiaGN",
    "UPGD",
    "DiagonalAdam",
    "NonFiniteError",
]
