"""The BackPACK adaptor: HesScale and HesScaleGN extensions dispatching to hesscale.rules."""

from hesscale.errors import HesScaleError, UnsupportedModuleError
from hesscale.extensions.hesscale import HesScale, HesScaleGN
from hesscale.extensions.registry import supported_modules

__all__ = ["HesScale", "HesScaleGN", "HesScaleError", "UnsupportedModuleError", "supported_modules"]
