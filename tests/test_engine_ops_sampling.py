"""F.grid_sample (bilinear, nearest; every padding mode; with and without align_corners; 2-d and
3-d) against the brute-force definition: dense Jacobians and Hessians of an independent
re-implementation that torch differentiates twice exactly, itself checked against
F.grid_sample's values and gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import hesscale
from hesscale.errors import UnsupportedOperationError
from tests.engine_checks import check_op
from tests.oracle import assert_close

PADDINGS = ("zeros", "border", "reflection")


def location(g, size, padding, align):
    """Where a normalised coordinate samples, in input index units (torch's documented rules:
    unnormalise; 'border' clamps; 'reflection' mirrors at the borders (the outer edges of the
    border pixels without align_corners) and clamps)."""
    u = (g + 1) / 2 * (size - 1) if align else ((g + 1) * size - 1) / 2
    if padding == "border":
        u = u.clamp(0, size - 1)
    elif padding == "reflection":
        low, high = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        span = high - low
        if span == 0:
            u = torch.zeros_like(u)
        else:  # a triangle wave of period 2 span through low
            r = torch.remainder(u - low, 2 * span)
            u = (low + span - (r - span).abs()).clamp(0, size - 1)
    return u


def reference_grid_sample(x, grid, mode, padding, align):
    """F.grid_sample written with gathers and products (x: (N, C, *S), grid: (N, *P, n))."""
    n = grid.shape[-1]
    sizes = x.shape[2:]
    batch, channels = x.shape[:2]
    flat = x.reshape(batch, channels, -1)
    points = grid.shape[1:-1]
    coords = [location(grid[..., n - 1 - d], sizes[d], padding, align) for d in range(n)]
    if mode == "nearest":
        choices = [[(torch.round(u).detach(), None)] for u in coords]
    else:
        choices = []
        for u in coords:
            lo = torch.floor(u).detach()
            choices.append([(lo, 1 - (u - lo)), (lo + 1, u - lo)])
    out = 0
    for corner in itertools.product(*choices):
        weight = torch.ones_like(coords[0])
        index = torch.zeros_like(coords[0], dtype=torch.long)
        valid = torch.ones_like(coords[0], dtype=torch.bool)
        for d, (pos, w) in enumerate(corner):
            if w is not None:
                weight = weight * w
            valid = valid & (pos >= 0) & (pos <= sizes[d] - 1)
            stride = 1
            for later in sizes[d + 1 :]:
                stride *= later
            index = index + pos.clamp(0, sizes[d] - 1).long() * stride
        index = index.reshape(batch, 1, -1).expand(batch, channels, -1)
        values = flat.gather(2, index).reshape(batch, channels, *points)
        out = out + values * (weight * valid).unsqueeze(1)
    return out


def grid_points(*shape, spread=1.3, seed=0):
    """Random normalised points, some beyond [-1, 1] (so that padding matters)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * spread


def case(n):
    generator = torch.Generator().manual_seed(n)
    if n == 2:
        x = torch.randn(2, 2, 3, 4, generator=generator, dtype=torch.float64)
        return x, grid_points(2, 2, 3, 2, seed=n)
    x = torch.randn(1, 2, 2, 3, 3, generator=generator, dtype=torch.float64)
    return x, grid_points(1, 2, 1, 2, 3, seed=n)


CONFIGS = [
    (n, mode, padding, align)
    for n in (2, 3)
    for mode in ("bilinear", "nearest")
    for padding in PADDINGS
    for align in (False, True)
]
IDS = [f"{n}d-{mode}-{padding}-{'align' if align else 'noalign'}" for n, mode, padding, align
       in CONFIGS]  # fmt: skip


# the nodes the tests below exercise (for the registry's coverage check)
CASES = [
    ("grid-sample-2d", lambda x, g: F.grid_sample(x, g, align_corners=False), case(2), None),
    ("grid-sample-3d", lambda x, g: F.grid_sample(x, g, align_corners=False), case(3), None),
    ("affine-grid", lambda t: F.affine_grid(t, [1, 1, 2, 3], align_corners=False),
     (torch.randn(1, 2, 3, dtype=torch.float64),), None),
]  # fmt: skip


@pytest.mark.parametrize("n, mode, padding, align", CONFIGS, ids=IDS)
def test_reference_is_grid_sample(n, mode, padding, align):
    """The oracle's re-implementation gives F.grid_sample's values and gradients."""
    x, grid = case(n)
    x.requires_grad_(True)
    grid.requires_grad_(True)
    want = F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align)
    got = reference_grid_sample(x, grid, mode, padding, align)
    assert_close(got, want)
    probe = torch.randn_like(want)
    assert_close(
        torch.autograd.grad((got * probe).sum(), (x, grid), materialize_grads=True),
        torch.autograd.grad((want * probe).sum(), (x, grid)),
    )


@pytest.mark.parametrize("n, mode, padding, align", CONFIGS, ids=IDS)
def test_rule_matches_definition(n, mode, padding, align):
    x, grid = case(n)
    name = check_op(
        lambda x, g: F.grid_sample(x, g, mode=mode, padding_mode=padding, align_corners=align),
        x, grid,
        definition=lambda x, g: reference_grid_sample(x, g, mode, padding, align),
    )  # fmt: skip
    assert name == f"GridSampler{n}DBackward0"


def test_fixed_grid_and_fixed_input():
    """Only one of the two needs a diagonal (a warp with a fixed flow; a fixed image)."""
    x, grid = case(2)

    def sample(x, g):
        return F.grid_sample(x, g, align_corners=False)

    def definition(x, g):
        return reference_grid_sample(x, g, "bilinear", "zeros", False)

    check_op(sample, x, grid, grad=(True, False), definition=definition)
    check_op(sample, x, grid, grad=(False, True), definition=definition)


def test_spatial_transformer_graph():
    """A small spatial transformer (affine_grid from a linear layer, then grid_sample, then a
    classifier): hesscale.backward runs and gives finite diagonals for every parameter."""
    torch.manual_seed(0)
    locator = torch.nn.Linear(12, 6)
    classifier = torch.nn.Linear(12, 3)
    x, y = torch.randn(5, 1, 3, 4), torch.randint(0, 3, (5,))
    theta = locator(x.flatten(1)).view(5, 2, 3)
    grid = F.affine_grid(theta, (5, 1, 3, 4), align_corners=False)
    warped = F.grid_sample(x, grid, align_corners=False)
    loss = F.cross_entropy(classifier(warped.flatten(1)), y)
    hesscale.backward(loss, gn="both")
    for p in (*locator.parameters(), *classifier.parameters()):
        assert torch.isfinite(p.hesscale).all() and (p.hesscale_gn >= 0).all()
    assert locator.weight.hesscale_gn.abs().sum() > 0


def test_bicubic_is_refused():
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    grid = grid_points(1, 2, 2, 2).float()
    out = F.grid_sample(x, grid, mode="bicubic", align_corners=False)
    with pytest.raises(UnsupportedOperationError, match="mode='bicubic'"):
        hesscale.backward(out.sum())


@pytest.mark.parametrize("align", [False, True], ids=["noalign", "align"])
@pytest.mark.parametrize("size", [(2, 1, 3, 4), (1, 2, 2, 3, 2)], ids=["2d", "3d"])
def test_affine_grid_matches_definition(size, align):
    n = len(size) - 2
    theta = torch.randn(size[0], n, n + 1, dtype=torch.float64)
    name = check_op(lambda t: F.affine_grid(t, list(size), align_corners=align), theta)
    assert name == "AffineGridGeneratorBackward0"


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_spatial_transformer_matches_graph_oracle(mode):
    """The whole graph (linear -> affine_grid -> grid_sample -> linear -> cross-entropy) against
    the graph oracle, both variants."""
    from tests.engine_checks import check_graph

    generator = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    params = {"locator": r(6, 12) * 0.3, "bias": torch.tensor([1.0, 0.1, 0.0, -0.1, 0.9, 0.1],
              dtype=torch.float64), "classifier": r(3, 12)}  # fmt: skip

    def loss_fn(p, x, y):
        theta = (x.flatten(1) @ p["locator"].T + p["bias"]).view(-1, 2, 3)
        grid = F.affine_grid(theta, [x.shape[0], 1, 3, 4], align_corners=False)
        warped = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
        logits = warped.flatten(1) @ p["classifier"].T
        return F.cross_entropy(logits, y), (logits,)

    check_graph(loss_fn, params, r(4, 1, 3, 4), torch.tensor([0, 2, 1, 1]))
