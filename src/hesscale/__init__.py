"""hesscale: Hessian and Gauss-Newton diagonals for PyTorch networks (HesScale)."""

from hesscale.extensions import (
    HesScale,
    HesScaleError,
    HesScaleGN,
    UnsupportedModuleError,
    supported_modules,
)

__version__ = "0.1.0"

__all__ = [
    "HesScale",
    "HesScaleGN",
    "HesScaleError",
    "UnsupportedModuleError",
    "supported_modules",
    "__version__",
]
