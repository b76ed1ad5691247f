"""Adaptors for Conv1d/2d/3d and ConvTranspose1d/2d/3d."""

from __future__ import annotations

from torch import nn

from hesscale.extensions.base import ModuleAdaptor, UnsupportedModuleError, describe
from hesscale.rules import conv
from hesscale.rules.conv import ConvGeometry

TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _padding(module: nn.Module) -> tuple[tuple[int, int], ...]:
    if module.padding == "valid":
        return ((0, 0),) * len(module.kernel_size)
    if module.padding == "same":
        return conv.same_padding(module.kernel_size, module.dilation)
    return tuple((p, p) for p in module.padding)


def _output_padding(module: nn.Module) -> tuple[int, ...]:
    """The output padding this call used: ``forward(x, output_size=...)`` may differ from
    ``module.output_padding``, so read it off the stored output's shape."""
    spatial = len(module.kernel_size)
    sizes_in, sizes_out = module.input0.shape[-spatial:], module.output.shape[-spatial:]
    return tuple(
        size_out - ((size_in - 1) * s - 2 * p + d * (k - 1) + 1)
        for size_in, size_out, s, p, d, k in zip(
            sizes_in, sizes_out, module.stride, module.padding, module.dilation,
            module.kernel_size, strict=True,
        )
    )  # fmt: skip


class Conv(ModuleAdaptor):
    """Convolutions and transposed convolutions, any dimension; see hesscale.rules.conv."""

    params = ("weight", "bias")

    def check(self, module):
        super().check(module)
        pads = any(p for pair in _padding(module) for p in pair)
        if module.padding_mode != "zeros" and pads:
            raise UnsupportedModuleError(
                f"{describe(module)} uses padding_mode={module.padding_mode!r}. HesScale supports "
                "convolutions with padding_mode='zeros' only (or no padding): with reflected, "
                "replicated or circular padding one input can reach an output through several "
                "weights, and the diagonal no longer follows from squared weights."
            )

    def geometry(self, module: nn.Module) -> ConvGeometry:
        transposed = isinstance(module, TRANSPOSED)
        return ConvGeometry(
            stride=tuple(module.stride),
            padding=_padding(module),
            dilation=tuple(module.dilation),
            groups=module.groups,
            transposed=transposed,
            output_padding=_output_padding(module) if transposed else None,
        )

    def input_diag(self, module, h_out, g_out):
        return conv.conv_input(h_out, module.input0, module.weight, self.geometry(module))

    def weight(self, module, h_out):
        return conv.conv_weight(h_out, module.input0, module.weight, self.geometry(module))

    def bias(self, module, h_out):
        return conv.conv_bias(h_out, len(module.kernel_size))


ADAPTORS = {module_type: Conv() for module_type in (nn.Conv1d, nn.Conv2d, nn.Conv3d, *TRANSPOSED)}
