"""hesscale: Hessian and Gauss-Newton diagonals for PyTorch networks (HesScale)."""

import importlib
import sys

from hesscale.errors import HesScaleError, UnsupportedModuleError, UnsupportedOperationError

__version__ = "0.1.0"  # the one source of the version (pyproject.toml reads it)

if "torch" in sys.modules:  # note DDP modules from now on (cheap once torch is loaded)
    importlib.import_module("hesscale.ddp_modules")

# Imported on first use, so that `import hesscale` (and the `hesscale` command) does not load
# torch and BackPACK until something needs them.
_LAZY = {
    "backward": "hesscale.engine",
    "compile": "hesscale.engine.compiled",
    "diagonal": "hesscale.integrations.dataset",
    "enable": "hesscale.engine",
    "supported_operations": "hesscale.engine",
    "HesScale": "hesscale.extensions",
    "HesScaleGN": "hesscale.extensions",
    "supported_modules": "hesscale.extensions",
}
_SUBPACKAGES = ("engine", "extensions", "optim", "estimators", "rules", "integrations")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:  # `hesscale.optim` after a bare `import hesscale`
        return importlib.import_module(f"hesscale.{name}")
    raise AttributeError(f"module 'hesscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBPACKAGES})


__all__ = [
    "backward",
    "compile",
    "diagonal",
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
