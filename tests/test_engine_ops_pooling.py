"""Per-operation engine rules for pooling (max, average, adaptive; 2d and 3d nodes, which 1-d
pools also record) and nearest-neighbour resampling, against the brute-force definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.engine_checks import check_op
from tests.test_pooling import (
    ADAPTIVE_SIZES,
    AVG,
    AVG_ANISO,
    AVG_DIVISOR,
    MAX,
    MAX_ANISO,
    SPATIAL,
)


def r(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def ties(*shape):
    """Windows with several equal maxima (ReLU zeros, repeated integers)."""
    return torch.randint(-1, 3, shape).double().relu()


def lifted(n):
    """1-d pools run as 2-d pools of height 1 (torch records the 2-d node between an unsqueeze
    and a squeeze): the same input as an (N, C, 1, L) tensor."""
    return (1, *SPATIAL[1]) if n == 1 else SPATIAL[n]


def lift_to_2d(kwargs):
    """A 1-d pool's arguments for the 2-d pool of height 1 it runs as."""
    neutral = {"kernel_size": 1, "stride": 1, "padding": 0, "dilation": 1}
    return {k: (neutral[k], v) if k in neutral else v for k, v in kwargs.items()}


def module_cases():
    """The configurations of the BackPACK adaptor's pooling tests (test_pooling.py), as the one
    node each records; 1-d pools as the 2-d node they record."""
    for n in (1, 2, 3):
        nodes = 2 if n == 1 else n
        lift = lift_to_2d if n == 1 else (lambda kwargs: kwargs)
        max_pool, avg_pool = getattr(nn, f"MaxPool{nodes}d"), getattr(nn, f"AvgPool{nodes}d")
        adaptive_avg = getattr(nn, f"AdaptiveAvgPool{nodes}d")
        adaptive_max = getattr(nn, f"AdaptiveMaxPool{nodes}d")
        shape = lifted(n)
        for i, kwargs in enumerate(MAX + ([MAX_ANISO[n]] if n in MAX_ANISO else [])):
            for batch in (1, 3):
                yield f"maxpool{n}d-{i}-n{batch}", max_pool(**lift(kwargs)), (r(batch, 2, *shape),)
            yield f"maxpool{n}d-{i}-ties", max_pool(**lift(kwargs)), (ties(2, 2, *shape),)
        for i, kwargs in enumerate(AVG + (AVG_DIVISOR + [AVG_ANISO[n]] if n > 1 else [])):
            batch = 1 + 2 * (i % 2)
            yield f"avgpool{n}d-{i}-n{batch}", avg_pool(**lift(kwargs)), (r(batch, 2, *shape),)
        for i, size in enumerate(ADAPTIVE_SIZES[n]):
            size = (1, size) if n == 1 else size
            batch = 1 + 2 * (i % 2)
            x = r(batch, 2, *shape)
            yield f"adaptive-avgpool{n}d-{i}-n{batch}", adaptive_avg(size), (x,)
            yield f"adaptive-maxpool{n}d-{i}-n{batch}", adaptive_max(size), (x,)
            yield f"adaptive-maxpool{n}d-{i}-ties", adaptive_max(size), (ties(2, 2, *shape),)


SAMPLES_2D = torch.tensor([[[0.3, 0.7], [0.1, 0.9]]], dtype=torch.float64)
SAMPLES_3D = torch.tensor([[[0.3, 0.7, 0.5], [0.1, 0.9, 0.2]]], dtype=torch.float64)

CASES = [
    (name, module, inputs, None) for name, module, inputs in module_cases()
] + [
    ("maxpool2d-unbatched", nn.MaxPool2d(3, 2, 1), (r(2, 5, 6),), None),
    ("avgpool2d-unbatched", nn.AvgPool2d(3, 2, 1, ceil_mode=True), (r(2, 5, 6),), None),
    ("avgpool3d-unbatched", nn.AvgPool3d(2, 1, divisor_override=3), (r(2, 3, 3, 3),), None),
    ("adaptive-avgpool2d-unbatched", nn.AdaptiveAvgPool2d((4, 3)), (r(2, 5, 6),), None),
    ("adaptive-maxpool3d-unbatched", nn.AdaptiveMaxPool3d((3, 2, 3)), (r(1, 4, 3, 4),), None),
    ("maxpool2d-channels-last", nn.MaxPool2d(2, 1),
     (r(2, 3, 4, 4).contiguous(memory_format=torch.channels_last),), None),
    ("fractional-maxpool2d", lambda x: F.fractional_max_pool2d(
        x, 2, output_size=(3, 2), _random_samples=SAMPLES_2D.expand(2, 2, 2)), (r(2, 2, 5, 4),),
     None),
    ("fractional-maxpool3d", lambda x: F.fractional_max_pool3d(
        x, 2, output_size=(2, 3, 2), _random_samples=SAMPLES_3D.expand(1, 2, 3)),
     (r(1, 2, 4, 5, 4),), None),
    ("upsample-nearest1d", lambda x: F.interpolate(x, scale_factor=2.5), (r(2, 2, 3),), None),
    ("upsample-nearest2d", lambda x: F.interpolate(x, size=(3, 5)), (r(2, 2, 2, 3),), None),
    ("upsample-nearest2d-down", lambda x: F.interpolate(x, size=(2, 3)), (r(1, 2, 4, 5),), None),
    ("upsample-nearest3d", lambda x: F.interpolate(x, scale_factor=(2, 1, 1.5)),
     (r(1, 2, 2, 2, 2),), None),
    ("upsample-nearest-exact1d", lambda x: F.interpolate(x, size=5, mode="nearest-exact"),
     (r(2, 2, 3),), None),
    ("upsample-nearest-exact2d", lambda x: F.interpolate(x, size=(3, 5), mode="nearest-exact"),
     (r(1, 2, 2, 3),), None),
    ("upsample-nearest-exact3d", lambda x: F.interpolate(
        x, scale_factor=(2, 1.5, 1), mode="nearest-exact"), (r(1, 2, 2, 2, 2),), None),
    # interpolation (separable linear maps, issue 17)
    ("interpolate-linear", lambda x: F.interpolate(x, size=7, mode="linear"), (r(1, 2, 5),),
     None),
    ("interpolate-linear-align", lambda x: F.interpolate(
        x, scale_factor=1.7, mode="linear", align_corners=True), (r(2, 1, 4),), None),
    ("interpolate-bilinear", lambda x: F.interpolate(x, size=(5, 7), mode="bilinear"),
     (r(1, 2, 3, 4),), None),
    ("interpolate-bilinear-down", lambda x: F.interpolate(x, size=(2, 3), mode="bilinear"),
     (r(1, 2, 5, 4),), None),
    ("interpolate-bicubic", lambda x: F.interpolate(x, scale_factor=1.5, mode="bicubic"),
     (r(1, 2, 3, 4),), None),
    ("interpolate-bicubic-align", lambda x: F.interpolate(
        x, size=(4, 5), mode="bicubic", align_corners=True), (r(1, 2, 3, 4),), None),
    ("interpolate-trilinear", lambda x: F.interpolate(
        x, scale_factor=(1.7, 2, 0.8), mode="trilinear"), (r(1, 1, 2, 3, 4),), None),
    ("pixel-shuffle", lambda x: F.pixel_shuffle(x, 2), (r(2, 8, 2, 3),), None),
    ("pixel-unshuffle", lambda x: F.pixel_unshuffle(x, 2), (r(2, 2, 4, 2),), None),
    ("channel-shuffle", lambda x: F.channel_shuffle(x, 3), (r(2, 6, 2, 2),), None),
]  # fmt: skip


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)
