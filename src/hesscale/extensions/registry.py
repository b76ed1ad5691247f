"""Which adaptor handles which nn.Module type. Each adaptor module contributes its ADAPTORS."""

from __future__ import annotations

from torch import nn

from hesscale.extensions import activations, conv, layers, losses, pooling

ADAPTORS: dict[type[nn.Module], object] = {}
for _family in (layers, activations, losses, conv, pooling):
    ADAPTORS.update(_family.ADAPTORS)


def supported_modules() -> list[str]:
    """Names of the module types HesScale and HesScaleGN handle."""
    return sorted(cls.__name__ for cls in ADAPTORS)
