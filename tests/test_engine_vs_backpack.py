"""hesscale.backward (no extend) against the BackPACK adaptor on every network the adaptor's
tests cover: the two implementations of the definition must agree to 1e-10."""

from __future__ import annotations

import copy

import pytest
import torch
from backpack import backpack, extend

import hesscale
from hesscale import HesScale, HesScaleGN
from tests.oracle import assert_close
from tests.test_extension import NETWORKS

pytestmark = pytest.mark.usefixtures("float64")


def both_ways(layers, loss_fn, x, y):
    plain = torch.nn.Sequential(*layers)
    extended = extend(copy.deepcopy(plain))
    loss = extend(copy.deepcopy(loss_fn))(extended(x), y)
    with backpack(HesScale(), HesScaleGN()):
        loss.backward()
    hesscale.backward(loss_fn(plain(x), y), gn="both")
    return plain, extended


PENDING = {  # networks whose operations get engine rules in a later commit
    "batchnorm-dropout-eval-identity": "NativeBatchNormBackward0",
    "batchnorm2d-zeropad-flatten": "NativeBatchNormBackward0",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=f"no rule yet: {PENDING[n]}"))
        if n in PENDING
        else n
        for n in NETWORKS
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_engine_equals_backpack_adaptor(name, batch):
    torch.manual_seed(batch)
    make_layers, make_loss, in_shape, make_target = NETWORKS[name]
    x, y = torch.randn(batch, *in_shape), make_target(batch)
    plain, extended = both_ways(make_layers(), make_loss(), x, y)
    for p, q in zip(plain.parameters(), extended.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)
        assert_close(p.hesscale, q.hesscale)
        assert_close(p.hesscale_gn, q.hesscale_gn)


def test_engine_on_an_extended_model_ignores_backpacks_hook_nodes():
    """extend() inserts identity BackwardHookFunctionBackward nodes; the engine passes the
    diagonal through them, so an extended model gives what the plain one gives."""
    torch.manual_seed(3)
    make_layers, make_loss, in_shape, make_target = NETWORKS["tanh-sigmoid-ce"]
    layers, loss_fn = make_layers(), make_loss()
    x, y = torch.randn(3, *in_shape), make_target(3)
    plain = torch.nn.Sequential(*layers)
    extended = extend(copy.deepcopy(plain))
    hesscale.backward(loss_fn(plain(x), y), gn="both")
    hesscale.backward(extend(copy.deepcopy(loss_fn))(extended(x), y), gn="both")
    for p, q in zip(plain.parameters(), extended.parameters(), strict=True):
        assert_close(q.hesscale, p.hesscale)
        assert_close(q.hesscale_gn, p.hesscale_gn)
