"""A user's own layer gets a rule through HesScale().set_module_extension (the README example)."""

import pytest
import torch
from backpack import backpack, extend
from torch import nn

from hesscale import HesScale, HesScaleGN, UnsupportedModuleError
from hesscale.extensions import ModuleAdaptor
from tests.oracle import assert_close, hesscale_by_definition

pytestmark = pytest.mark.usefixtures("float64")


class Scale(nn.Module):
    """z = x * a + x^2 * b, learnable per feature (curved in x, so its own term matters)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.rand(features) + 0.5)
        self.b = nn.Parameter(0.3 * torch.randn(features))

    def forward(self, x):
        return x * self.a + x.square() * self.b


class ScaleRule(ModuleAdaptor):
    """dz/dx = a + 2 b x, d2z/dx2 = 2 b; dz/da = x, dz/db = x^2 (linear in a and b)."""

    params = ("a", "b")

    def input_diag(self, module, h_out, g_out):
        x, a, b = module.input0, module.a, module.b
        h_in = (a + 2 * b * x).square() * h_out
        return h_in if g_out is None else h_in + 2 * b * g_out

    def a(self, module, h_out):
        return (h_out * module.input0.square()).sum(0)

    def b(self, module, h_out):
        return (h_out * module.input0.pow(4)).sum(0)


def layers():
    torch.manual_seed(0)
    return [nn.Linear(3, 4), Scale(4), nn.Tanh(), nn.Linear(4, 2)]


@pytest.mark.parametrize("extension", [HesScale, HesScaleGN])
def test_user_layer_rule_matches_the_definition(extension):
    chain = layers()
    model, loss_fn = extend(nn.Sequential(*chain)), extend(nn.CrossEntropyLoss())
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    ext = extension()
    ext.set_module_extension(Scale, ScaleRule())
    with backpack(ext):
        loss_fn(model(x), y).backward()
    gauss_newton = extension is HesScaleGN
    expected = hesscale_by_definition(chain, lambda o: loss_fn(o, y), x, gauss_newton)
    for p in model.parameters():
        assert_close(getattr(p, ext.savefield), expected[id(p)])
    assert "Scale" in ext.supported_modules()


def test_user_layer_without_a_rule_is_named_and_registration_is_per_instance():
    model, loss_fn = extend(nn.Sequential(*layers())), extend(nn.CrossEntropyLoss())
    registered = HesScale()
    registered.set_module_extension(Scale, ScaleRule())
    with pytest.raises(UnsupportedModuleError, match="no rule for Scale.*set_module_extension"):
        with backpack(HesScale()):
            loss_fn(model(torch.randn(2, 3)), torch.tensor([0, 1])).backward()


def test_set_module_extension_checks_its_arguments():
    ext = HesScale()
    with pytest.raises(ValueError, match="Linear already has a rule.*overwrite=True"):
        ext.set_module_extension(nn.Linear, ScaleRule())
    with pytest.raises(TypeError, match="ModuleAdaptor"):
        ext.set_module_extension(Scale, lambda module: None)
    ext.set_module_extension(nn.Linear, ScaleRule(), overwrite=True)  # replaces a built-in
