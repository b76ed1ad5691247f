"""The BackPACK adaptor: HesScale and HesScaleGN extensions dispatching to hesscale.rules.

``ModuleAdaptor`` (and ``LossAdaptor`` for a loss) is the base class of a rule for one module
type; ``HesScale().set_module_extension(MyLayer, MyAdaptor())`` adds one for a user's layer.
"""

from hesscale.errors import HesScaleError, UnsupportedModuleError
from hesscale.extensions.base import LossAdaptor, ModuleAdaptor
from hesscale.extensions.hesscale import HesScale, HesScaleGN
from hesscale.extensions.registry import supported_modules

__all__ = [
    "HesScale",
    "HesScaleGN",
    "HesScaleError",
    "LossAdaptor",
    "ModuleAdaptor",
    "UnsupportedModuleError",
    "supported_modules",
]
