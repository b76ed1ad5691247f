"""hesscale: Hessian and Gauss-Newton diagonals for PyTorch networks (HesScale)."""

import warnings

from hesscale.engine import backward, enable, supported_operations
from hesscale.errors import UnsupportedOperationError
from hesscale.extensions import (
    HesScale,
    HesScaleError,
    HesScaleGN,
    UnsupportedModuleError,
    supported_modules,
)

# torch warns at every backward through BackPACK's hooks on a first layer whose input needs no
# gradient, which is every network. It is harmless there: hide that one message.
warnings.filterwarnings(
    "ignore",
    message="Full backward hook is firing when gradients are computed with respect to module",
    category=UserWarning,
)

__version__ = "0.1.0"

__all__ = [
    "backward",
    "enable",
    "supported_operations",
    "UnsupportedOperationError",
    "HesScale",
    "HesScaleGN",
    "HesScaleError",
    "UnsupportedModuleError",
    "supported_modules",
    "__version__",
]
