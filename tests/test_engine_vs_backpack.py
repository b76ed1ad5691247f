"""hesscale.backward (no extend) against the BackPACK adaptor on every network the adaptor's
tests cover: the two implementations of the definition must agree to 1e-10."""

from __future__ import annotations

import copy

import pytest
import torch
from backpack import backpack, extend
from torch import nn

import hesscale
from hesscale import HesScale, HesScaleGN
from tests.oracle import assert_close
from tests.test_conv import NETWORKS as CONV_NETWORKS
from tests.test_conv import make_network
from tests.test_extension import NETWORKS
from tests.test_pooling import NETWORKS as POOLING_NETWORKS

pytestmark = pytest.mark.usefixtures("float64")


def both_ways(layers, loss_fn, x, y):
    """hesscale.backward on the plain layers, BackPACK's HesScale and HesScaleGN on a copy."""
    plain = torch.nn.Sequential(*layers)
    extended = extend(copy.deepcopy(plain))
    loss = extend(copy.deepcopy(loss_fn))(extended(x), y)
    with backpack(HesScale(), HesScaleGN()):
        loss.backward()
    hesscale.backward(loss_fn(plain(x), y), gn="both")
    return plain, extended


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("batch", [1, 3])
def test_engine_equals_backpack_adaptor(name, batch):
    torch.manual_seed(batch)
    make_layers, make_loss, in_shape, make_target = NETWORKS[name]
    x, y = torch.randn(batch, *in_shape), make_target(batch)
    assert_agree(*both_ways(make_layers(), make_loss(), x, y))


def assert_agree(plain, extended):
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


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel:UserWarning")
@pytest.mark.parametrize("name", CONV_NETWORKS)
def test_engine_equals_backpack_adaptor_on_conv_networks(name):
    assert_agree(*both_ways(*make_network(name)))


@pytest.mark.parametrize("name", POOLING_NETWORKS)
@pytest.mark.parametrize("batch", [1, 3])
def test_engine_equals_backpack_adaptor_on_pooling_networks(name, batch):
    torch.manual_seed(3)
    layers = POOLING_NETWORKS[name]()
    x, y = torch.randn(batch, 3), torch.randint(0, 3, (batch,))
    assert_agree(*both_ways(layers, nn.CrossEntropyLoss(), x, y))
