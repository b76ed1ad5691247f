"""The any-model engine: HesScale over the graph autograd records (``hesscale.backward``)."""

from hesscale.engine.backward import backward
from hesscale.engine.call import NodeCall
from hesscale.engine.enable import enable
from hesscale.engine.ops import supported_operations  # importing ops registers every rule
from hesscale.engine.registry import register

__all__ = ["backward", "enable", "register", "supported_operations", "NodeCall"]
