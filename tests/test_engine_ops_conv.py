"""Per-operation engine rules for convolutions (1d/2d/3d, transposed) and the copying padding
modes against the definition computed by brute force for that one operation."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from tests.engine_checks import check_op


def r(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# spatial input size and kernel size per dimension count: odd and even kernels, a kernel of
# size 1, inputs large enough for every transposed configuration below
SPATIAL = {1: (5,), 2: (4, 5), 3: (3, 3, 4)}
KERNEL = {1: (3,), 2: (2, 3), 3: (2, 1, 2)}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def convolution(n, transposed, stride, padding, dilation, groups, output_padding=0):
    if transposed:
        conv = CONV_T[n]
        return lambda x, w, b=None: conv(x, w, b, stride, padding, output_padding, groups, dilation)
    return lambda x, w, b=None: CONV[n](x, w, b, stride, padding, dilation, groups)


def conv_case(n, transposed, stride, padding, dilation, groups, output_padding, bias, batch):
    channels_in, channels_out = 2, 4
    kernel = KERNEL[n]
    if transposed:
        weight = r(channels_in, channels_out // groups, *kernel)
    else:
        weight = r(channels_out, channels_in // groups, *kernel)
    inputs = (r(batch, channels_in, *SPATIAL[n]), weight) + ((r(channels_out),) if bias else ())
    fn = convolution(n, transposed, stride, padding, dilation, groups, output_padding)
    name = (
        f"conv{'-transposed' if transposed else ''}{n}d-s{stride}-p{padding}-d{dilation}"
        f"-g{groups}-op{output_padding}-{'bias' if bias else 'nobias'}-n{batch}"
    )
    return name, fn, inputs, None


def conv_grid():
    """Every dimension x transposed x stride x padding x dilation x groups; bias, batch size
    (1 or 2) and a transposed convolution's output padding drawn with a fixed seed."""
    rng = random.Random(0)
    for n, transposed, stride, padding, dilation, groups in itertools.product(
        (1, 2, 3), (False, True), (1, 2), (0, 1), (1, 2), (1, 2)
    ):
        output_padding = rng.choice((0, max(stride, dilation) - 1)) if transposed else 0
        bias, batch = rng.choice((True, False)), rng.choice((1, 2))
        yield conv_case(n, transposed, stride, padding, dilation, groups, output_padding, bias,
                        batch)  # fmt: skip


torch.manual_seed(0)
CASES = [
    *conv_grid(),
    # per-dimension stride / padding / dilation, depthwise, odd 'same', output padding per dim
    ("conv2d-anisotropic", convolution(2, False, (2, 1), (1, 0), (1, 2), 1),
     (r(2, 2, 5, 4), r(3, 2, 3, 2), r(3)), None),
    ("conv2d-depthwise", convolution(2, False, 1, 1, 1, 4), (r(2, 4, 3, 3), r(8, 1, 3, 3)), None),
    ("conv1d-same-odd", lambda x, w: F.conv1d(x, w, padding="same", dilation=2),
     (r(2, 2, 6), r(3, 2, 3)), None),
    ("conv3d-anisotropic", convolution(3, False, (1, 2, 1), (0, 1, 1), (2, 1, 1), 2),
     (r(1, 2, 4, 3, 3), r(2, 1, 2, 2, 2), r(2)), None),
    ("conv-transposed2d-anisotropic", convolution(2, True, (3, 2), (1, 0), (1, 2), 1, (2, 1)),
     (r(2, 2, 2, 3), r(2, 3, 3, 2), r(3)), None),
    # kernels wider than input + padding reach: taps that read only padding zeros are cropped
    ("conv2d-kernel-over-1x1-input", convolution(2, False, 1, 1, 1, 1),
     (r(2, 3, 1, 1), r(4, 3, 3, 3), r(4)), None),
    ("conv2d-5x5-over-2x2-input", convolution(2, False, 1, 2, 1, 1),
     (r(2, 2, 2, 2), r(3, 2, 5, 5), r(3)), None),
    ("conv2d-dilated-over-1x1-input-grouped", convolution(2, False, 1, 2, 2, 2),
     (r(1, 4, 1, 1), r(2, 2, 3, 3)), None),
    ("conv2d-strided-over-1x2-input", convolution(2, False, 2, 1, 1, 1),
     (r(2, 2, 1, 2), r(3, 2, 3, 3)), None),
    ("conv1d-kernel-over-1-input-weight-only", convolution(1, False, 1, 1, 1, 1),
     (r(2, 2, 1), r(3, 2, 3), r(3)), (False, True, True)),
    ("conv3d-crop-one-dim", convolution(3, False, 1, (1, 1, 0), 1, 1),
     (r(2, 2, 1, 2, 3), r(2, 2, 3, 3, 1), r(2)), None),
    # only some inputs need a diagonal: a first layer (the data), a frozen weight
    ("conv2d-weight-and-bias-only", convolution(2, False, 2, 1, 1, 1),
     (r(2, 2, 4, 4), r(3, 2, 3, 3), r(3)), (False, True, True)),
    ("conv2d-input-only", convolution(2, False, 1, 0, 1, 1), (r(2, 2, 4, 4), r(3, 2, 2, 2)),
     (True, False)),
    # padding modes other than zeros: separate copying nodes before the convolution
    ("reflect-pad1d", lambda x: F.pad(x, (2, 1), mode="reflect"), (r(2, 3, 4),), None),
    ("reflect-pad2d", lambda x: F.pad(x, (1, 2, 2, 0), mode="reflect"), (r(2, 2, 3, 4),), None),
    ("reflect-pad3d", lambda x: F.pad(x, (1, 1, 0, 1, 1, 0), mode="reflect"),
     (r(1, 2, 2, 3, 2),), None),
    ("replicate-pad1d", lambda x: F.pad(x, (2, 1), mode="replicate"), (r(2, 3, 4),), None),
    ("replicate-pad2d", lambda x: F.pad(x, (1, 2, 3, 0), mode="replicate"),
     (r(2, 2, 3, 2),), None),
    ("replicate-pad3d", lambda x: F.pad(x, (2, 1, 0, 1, 1, 0), mode="replicate"),
     (r(1, 2, 2, 3, 2),), None),
]  # fmt: skip


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)


# nodes that no single operation on leaves records, and the test that checks each
COVERED_ELSEWHERE = {
    "torch::autograd::CopySlices": (
        "test_engine_graphs_cnn.py::test_circular_padding_matches_oracle, "
        "test_engine_graphs_cnn.py::test_slice_assignment_matches_oracle"
    ),
}
