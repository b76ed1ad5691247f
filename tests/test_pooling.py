"""Pooling rules (max, average, adaptive; 1d/2d/3d) against the definition, and whole networks
with pools through BackPACK against the brute-force recursion."""

import pytest
import torch
from backpack import backpack, extend
from torch import nn

from hesscale import HesScale, HesScaleGN
from hesscale.extensions.pooling import ADAPTORS
from hesscale.extensions.registry import supported_modules
from tests.oracle import assert_close, definition_diag, hesscale_by_definition

pytestmark = pytest.mark.usefixtures("float64")


SPATIAL = {1: (9,), 2: (5, 6), 3: (4, 3, 4)}


def _nd(cls_name, n):
    return getattr(nn, f"{cls_name}{n}d")


# (module type, n, constructor kwargs); kernels >= stride give overlapping windows.
MAX = [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=2),
    dict(kernel_size=2, stride=1, dilation=2, ceil_mode=True),
    dict(kernel_size=3, stride=2, ceil_mode=True),
]
MAX_ANISO = {
    2: dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(1, 2)),
    3: dict(kernel_size=(2, 3, 2), stride=(1, 2, 2), padding=(0, 1, 1), ceil_mode=True),
}
AVG = [
    dict(kernel_size=3, stride=1, padding=1, count_include_pad=True),
    dict(kernel_size=3, stride=1, padding=1, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=2, stride=2, ceil_mode=True),
    dict(kernel_size=2, stride=1, padding=1, ceil_mode=False, count_include_pad=False),
]
AVG_DIVISOR = [  # divisor_override exists for 2d and 3d only
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=5),
    dict(kernel_size=2, stride=1, padding=1, count_include_pad=False, divisor_override=3),
]
AVG_ANISO = {
    2: dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), ceil_mode=True),
    3: dict(
        kernel_size=(3, 2, 2),
        stride=(2, 1, 2),
        padding=(1, 0, 1),
        ceil_mode=True,
        count_include_pad=False,
    ),
}
ADAPTIVE_SIZES = {  # divisible, non-divisible (overlapping windows), larger than input, None
    1: [3, 4, 7, 1, 12],
    2: [(3, 7), (4, 5), 1, (5, None), (8, 3)],
    3: [(5, 2, 1), (3, 3, 2), (None, 3, 4), (6, 1, 3)],
}


def cases():
    for n in (1, 2, 3):
        for kwargs in MAX + ([MAX_ANISO[n]] if n in MAX_ANISO else []):
            yield _nd("MaxPool", n), n, kwargs
        for kwargs in AVG + (AVG_DIVISOR + [AVG_ANISO[n]] if n > 1 else []):
            yield _nd("AvgPool", n), n, kwargs
        for size in ADAPTIVE_SIZES[n]:
            yield _nd("AdaptiveAvgPool", n), n, dict(output_size=size)
            yield _nd("AdaptiveMaxPool", n), n, dict(output_size=size)


CASES = list(cases())


def case_id(case):
    cls, _, kwargs = case
    return cls.__name__ + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


def rule_input_diag(module, x, h_out, g_out):
    """What the adaptor computes, given what BackPACK stores in the forward pass."""
    module.input0, module.output = x, module(x)
    if isinstance(module.output, tuple):  # return_indices=True: BackPACK keeps the values
        module.output = module.output[0]
    adaptor = ADAPTORS[type(module)]
    adaptor.check(module)
    return adaptor.input_diag(module, h_out, g_out)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("batch", [1, 3])
def test_rule_matches_definition(case, batch):
    cls, n, kwargs = case
    torch.manual_seed(batch)
    module = cls(**kwargs)
    x = torch.randn(batch, 2, *SPATIAL[n])
    out_shape = module(x).shape
    h_out = torch.randn(out_shape)  # negative entries too
    expected = definition_diag(module, x, h_out, None)
    assert expected.abs().max() > 0
    assert_close(rule_input_diag(module, x, h_out, None), expected)


# a few configurations also with the second-order term of the definition (zero for pools)
SECOND_ORDER = [
    (nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (nn.AvgPool1d, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    (nn.AdaptiveAvgPool2d, dict(output_size=(4, 5))),
    (nn.AdaptiveMaxPool1d, dict(output_size=4)),
]


@pytest.mark.parametrize("cls, kwargs", SECOND_ORDER)
def test_second_order_term_vanishes(cls, kwargs):
    torch.manual_seed(1)
    module = cls(**kwargs)
    n = int(cls.__name__[-2])
    x = torch.randn(2, 2, *SPATIAL[n])
    h_out, g_out = torch.randn_like(module(x)), torch.randn_like(module(x))
    expected = definition_diag(module, x, h_out, g_out)
    assert_close(rule_input_diag(module, x, h_out, g_out), expected)
    assert_close(rule_input_diag(module, x, h_out, None), expected)


@pytest.mark.parametrize(
    "module, shape",
    [
        (nn.MaxPool1d(3, 2, 1, return_indices=True), (2, 9)),
        (nn.AvgPool1d(3, 2, 1, ceil_mode=True), (2, 9)),
        (nn.AvgPool2d(3, 2, 1, divisor_override=2), (2, 5, 6)),
        (nn.AdaptiveAvgPool2d((4, 3)), (2, 5, 6)),
        (nn.AdaptiveMaxPool3d((3, 2, 3), return_indices=True), (1, 4, 3, 4)),
        (nn.MaxPool3d(2, 1, return_indices=True), (3, 4, 3, 4)),
    ],
)
def test_unbatched_inputs_and_return_indices(module, shape):
    torch.manual_seed(2)
    x = torch.randn(shape)

    def values(t):
        out = module(t)
        return out[0] if isinstance(out, tuple) else out

    h_out = torch.randn_like(values(x))
    assert_close(rule_input_diag(module, x, h_out, None), definition_diag(values, x, h_out, None))


MAX_CASES = [c for c in CASES if "Max" in c[0].__name__]


@pytest.mark.parametrize("case", MAX_CASES, ids=[case_id(c) for c in MAX_CASES])
@pytest.mark.parametrize("batched", [True, False])
def test_max_pools_pick_the_forward_maximum_among_ties_and_nans(case, batched):
    """Windows with several equal maxima (ReLU zeros) or NaNs: h_z goes where the gradient goes."""
    cls, n, kwargs = case
    torch.manual_seed(4)
    module = cls(**kwargs)
    x = torch.randint(-1, 2, (3, 2, *SPATIAL[n])).double().relu()
    x.view(-1)[::7] = float("nan")
    x = x if batched else x[0]
    h_out = torch.rand_like(module(x)) + 1  # positive: a wrong choice cannot cancel
    assert_close(rule_input_diag(module, x, h_out, None), definition_diag(module, x, h_out, None))


def test_all_pools_are_registered():
    for cls in ADAPTORS:
        assert cls.__name__ in supported_modules()


# whole networks ---------------------------------------------------------------------------


class Values(nn.Module):
    """A pool with return_indices=True, of which the network uses the values."""

    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        values, _ = self.pool(x)
        return values


NETWORKS = {
    "1d": lambda: [
        nn.Linear(3, 2 * 9),
        nn.Unflatten(1, (2, 9)),
        nn.MaxPool1d(3, 1, 1),
        nn.Tanh(),
        nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        nn.Sigmoid(),
        nn.AdaptiveAvgPool1d(3),
        nn.Flatten(),
        nn.Linear(6, 3),
    ],
    "2d": lambda: [
        nn.Linear(3, 2 * 5 * 6),
        nn.Unflatten(1, (2, 5, 6)),
        nn.AvgPool2d(3, 1, 1, divisor_override=4),
        nn.Tanh(),
        Values(nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)),
        nn.Sigmoid(),
        nn.AdaptiveMaxPool2d((2, 3)),
        nn.Flatten(),
        nn.Linear(12, 3),
    ],
    "3d": lambda: [
        nn.Linear(3, 4 * 3 * 4),
        nn.Unflatten(1, (1, 4, 3, 4)),
        nn.AdaptiveAvgPool3d((3, 2, 3)),
        nn.Tanh(),
        nn.MaxPool3d(2, 1, padding=1),
        nn.Sigmoid(),
        nn.AvgPool3d(2, 2, ceil_mode=True, count_include_pad=False),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 3),
    ],
}


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("batch", [1, 3])
def test_network_matches_recursion_by_definition(name, batch):
    torch.manual_seed(3)
    layers = NETWORKS[name]()
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(batch, 3), torch.randint(0, 3, (batch,))
    model, loss_module = extend(nn.Sequential(*layers)), extend(loss_fn)
    with backpack(HesScale(), HesScaleGN()):
        loss_module(model(x), y).backward()
    differ = False
    for field, gauss_newton in [("hesscale", False), ("hesscale_gn", True)]:
        expected = hesscale_by_definition(layers, lambda o: loss_fn(o, y), x, gauss_newton)
        for p in model.parameters():
            assert_close(getattr(p, field), expected[id(p)])
        differ |= bool((model[0].weight.hesscale - model[0].weight.hesscale_gn).abs().max() > 1e-8)
    assert differ  # the activations between the pools make the variants differ
    assert model[0].weight.hesscale_gn.abs().max() > 0
