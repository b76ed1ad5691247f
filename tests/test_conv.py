"""Convolution rules (Conv1d/2d/3d, ConvTranspose1d/2d/3d) against the brute-force definition."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from backpack import backpack, extend
from torch import Tensor, nn

from hesscale import HesScale, HesScaleGN
from hesscale.errors import UnsupportedModuleError
from hesscale.extensions.conv import ADAPTORS
from hesscale.rules import conv as rules
from tests.oracle import definition_diag, hesscale_by_definition, parameter_fn

DTYPE = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The oracles run thousands of tiny ops; on a shared 2-core machine intra-op threads only
    spin (measured: 344 s wall for this file with the default threads vs 16 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (module type, kernel size, input spatial size): even and odd kernels, tiny inputs
SHAPES = {
    nn.Conv1d: (3, (6,)),
    nn.Conv2d: ((3, 2), (5, 3)),
    nn.Conv3d: ((2, 1, 3), (3, 2, 5)),
    nn.ConvTranspose1d: (3, (3,)),
    nn.ConvTranspose2d: ((2, 3), (2, 2)),
    nn.ConvTranspose3d: ((2, 1, 2), (2, 3, 2)),
}


def _configs() -> list[tuple]:
    """Every module type x stride x padding x dilation x groups that torch accepts; bias, batch
    size (1 or 3) and output padding drawn per configuration with a fixed seed."""
    rng = random.Random(0)
    configs = []
    for module_type, stride, padding, dilation, groups in itertools.product(
        SHAPES, (1, 2), (0, 1, "same"), (1, 2), (1, 2)
    ):
        transposed = issubclass(module_type, nn.modules.conv._ConvTransposeNd)
        if padding == "same" and (stride != 1 or transposed):
            continue  # torch rejects these
        output_padding = rng.choice((0, max(stride, dilation) - 1)) if transposed else 0
        bias, batch = rng.choice((True, False)), rng.choice((1, 3))
        configs.append(
            (module_type, stride, padding, dilation, groups, output_padding, bias, batch)
        )
    return configs


def _id(config: tuple) -> str:
    module_type, stride, padding, dilation, groups, output_padding, bias, batch = config
    return (
        f"{module_type.__name__}-s{stride}-p{padding}-d{dilation}-g{groups}-op{output_padding}"
        f"-{'bias' if bias else 'nobias'}-n{batch}"
    )


def _build(module_type, stride, padding, dilation, groups, output_padding, bias) -> nn.Module:
    kernel_size, _ = SHAPES[module_type]
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    if output_padding:
        kwargs["output_padding"] = output_padding
    return module_type(2, 2, kernel_size, **kwargs).to(DTYPE)


def assert_close_relative(actual: Tensor, expected: Tensor, rtol: float = 1e-10) -> None:
    """Entrywise |a - e| <= rtol * max|e| (entries of mixed sign can cancel to zero)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = expected.abs().max().clamp_min(1e-300)
    error = (actual - expected).abs().max()
    assert error <= rtol * scale, f"max error {error:.3e} vs scale {scale:.3e}"


def _run_adaptor(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Forward as BackPACK would store it; random h_z (mixed signs) and g_z."""
    with torch.no_grad():
        output = module(x)
    module.input0, module.output = x, output
    return output, torch.randn_like(output), torch.randn_like(output)


@pytest.mark.parametrize("config", _configs(), ids=_id)
def test_rules_match_definition(config):
    torch.manual_seed(0)
    *module_args, batch = config
    module = _build(*module_args)
    _, spatial = SHAPES[type(module)]
    x = torch.randn(batch, 2, *spatial, dtype=DTYPE)
    output, h_out, g_out = _run_adaptor(module, x)
    adaptor = ADAPTORS[type(module)]
    adaptor.check(module)

    # Conv is bilinear: passing g_out checks that the second-order term is indeed zero.
    with torch.no_grad():
        h_x = adaptor.input_diag(module, h_out, g_out)
    assert_close_relative(h_x, definition_diag(module, x, h_out, g_out))
    for name in ("weight", "bias"):
        param = getattr(module, name)
        if param is None:
            continue
        with torch.no_grad():
            h_p = getattr(adaptor, name)(module, h_out)
        assert_close_relative(
            h_p, definition_diag(parameter_fn(module, name, x), param, h_out, g_out)
        )


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv2d(2, 4, (2, 3), padding="valid"),
        nn.Conv2d(2, 4, (2, 4), padding="same", dilation=(1, 2)),
        nn.Conv2d(2, 4, 3, padding=(1, 0), stride=(2, 1), dilation=(2, 1)),
        nn.Conv1d(2, 4, 2, padding=0, padding_mode="circular"),
        nn.Conv1d(4, 4, 4, padding="same", groups=4),
        nn.Conv3d(2, 2, 2, padding="same", bias=False),
        nn.ConvTranspose2d(2, 4, 3, stride=(3, 2), padding=(1, 0), output_padding=(2, 1)),
    ],
    ids=str,
)
@pytest.mark.parametrize("batched", [True, False])
def test_special_configurations(module, batched):
    """String / tuple padding, even kernels with 'same' (asymmetric), unbatched inputs."""
    torch.manual_seed(1)
    module = module.to(DTYPE)
    spatial = (3, 3, 3)[: module.weight.dim() - 2]
    x = torch.randn(*((2,) if batched else ()), module.in_channels, *spatial, dtype=DTYPE)
    output, h_out, _ = _run_adaptor(module, x)
    adaptor = ADAPTORS[type(module)]
    with torch.no_grad():
        h_x = adaptor.input_diag(module, h_out, None)
        h_w = adaptor.weight(module, h_out)
    assert_close_relative(h_x, definition_diag(module, x, h_out, None))
    assert_close_relative(
        h_w, definition_diag(parameter_fn(module, "weight", x), module.weight, h_out, None)
    )
    if module.bias is not None:
        with torch.no_grad():
            h_b = adaptor.bias(module, h_out)
        assert_close_relative(
            h_b, definition_diag(parameter_fn(module, "bias", x), module.bias, h_out, None)
        )


def test_transposed_with_output_size():
    """forward(x, output_size=...) chooses the output padding per call."""
    torch.manual_seed(2)
    module = nn.ConvTranspose2d(2, 3, 3, stride=3, padding=1).to(DTYPE)
    x = torch.randn(2, 2, 2, 3, dtype=DTYPE)
    with torch.no_grad():
        output = module(x, output_size=(5, 9))  # output padding (1, 2)
    module.input0, module.output = x, output
    h_out = torch.randn_like(output)
    adaptor = ADAPTORS[nn.ConvTranspose2d]
    fn = lambda t: module(t, output_size=(5, 9))  # noqa: E731
    with torch.no_grad():
        h_x, h_w = adaptor.input_diag(module, h_out, None), adaptor.weight(module, h_out)
    assert_close_relative(h_x, definition_diag(fn, x, h_out, None))
    weight_fn = lambda w: nn.functional.conv_transpose2d(x, w, module.bias, 3, 1, (1, 2))  # noqa: E731
    assert_close_relative(h_w, definition_diag(weight_fn, module.weight, h_out, None))


def test_geometry_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="pads symmetrically"):
        rules.ConvGeometry(stride=(1,), padding=((0, 1),), dilation=(1,), transposed=True)
    with pytest.raises(ValueError, match="one entry per dimension"):
        rules.ConvGeometry(stride=(1, 1), padding=((0, 0),), dilation=(1, 1))


def _whole_network_check(layers: list[nn.Module], loss_fn: nn.Module, x: Tensor, y: Tensor):
    model = extend(nn.Sequential(*layers).to(DTYPE))
    loss_module = extend(loss_fn)
    for extension, gauss_newton in ((HesScale(), False), (HesScaleGN(), True)):
        model.zero_grad()
        with backpack(extension):
            loss_module(model(x), y).backward()
        expected = hesscale_by_definition(list(model), lambda out: loss_fn(out, y), x, gauss_newton)
        params = [p for p in model.parameters()]
        assert len(expected) == len(params)
        for param in params:
            assert_close_relative(getattr(param, extension.savefield), expected[id(param)])


def _randn(*shape: int):
    return lambda: torch.randn(*shape, dtype=DTYPE)


# name: (seed, layers, loss, input, target); also run through hesscale.backward in
# test_engine_vs_backpack.py
NETWORKS = {
    "conv-cross-entropy": (
        3,
        lambda: [
            nn.Conv2d(2, 4, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 2, padding="same", groups=2, dilation=1),
            nn.Sigmoid(),
            nn.Conv2d(4, 2, 2, dilation=2, bias=False),
            nn.Flatten(),
            nn.Linear(2, 3),
        ],
        nn.CrossEntropyLoss,
        _randn(3, 2, 5, 5),
        lambda: torch.tensor([0, 2, 1]),
    ),
    "transposed-mse": (
        4,
        lambda: [
            nn.Conv1d(2, 4, 3, padding=1),
            nn.Tanh(),
            nn.ConvTranspose1d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
            nn.ReLU(),
            nn.ConvTranspose1d(4, 2, 2, dilation=2),
        ],
        nn.MSELoss,
        _randn(2, 2, 4),
        _randn(2, 2, 10),
    ),
    "transposed-3d-mse-sum": (
        5,
        lambda: [
            nn.ConvTranspose3d(1, 2, 2, stride=(1, 2, 1)),
            nn.ELU(),
            nn.Conv3d(2, 1, (1, 2, 2), padding="same"),
            nn.Flatten(),
        ],
        lambda: nn.MSELoss(reduction="sum"),
        _randn(2, 1, 2, 2, 2),
        _randn(2, 3 * 4 * 3),
    ),
    "unbatched-mse": (
        6,
        lambda: [
            nn.Conv1d(2, 3, 2, padding="same"),
            nn.Softplus(),
            nn.ConvTranspose1d(3, 2, 2, stride=2),
            nn.Flatten(0),
            nn.Linear(20, 2),
        ],
        nn.MSELoss,
        _randn(2, 5),
        _randn(2),
    ),
}


def make_network(name: str) -> tuple[list[nn.Module], nn.Module, Tensor, Tensor]:
    """The layers (float64), loss, input and target of ``NETWORKS[name]``, seeded."""
    seed, make_layers, make_loss, make_x, make_y = NETWORKS[name]
    torch.manual_seed(seed)
    layers = [layer.to(DTYPE) for layer in make_layers()]
    return layers, make_loss(), make_x(), make_y()


@pytest.mark.parametrize("name", NETWORKS)
def test_network_matches_recursion_by_definition(name):
    _whole_network_check(*make_network(name))


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_other_padding_modes_are_rejected(padding_mode):
    model = extend(
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode=padding_mode), nn.Flatten())
    )
    loss_fn = extend(nn.MSELoss())
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(UnsupportedModuleError, match=f"padding_mode='{padding_mode}'.*'zeros'"):
        with backpack(HesScale()):
            loss_fn(model(x), torch.zeros(2, 32)).backward()
