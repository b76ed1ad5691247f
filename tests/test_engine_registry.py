"""Every rule in the engine's registry is exercised by a test against the definition.

Each ``tests/test_engine_ops_*.py`` module lists its per-operation ``CASES`` (id, fn, inputs,
grad); nodes that no single operation on leaves records (in-place variants, fused kernels that
only appear inside a model) are listed in that module's ``COVERED_ELSEWHERE``, mapping the node
name to the test that checks it against an oracle.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re

import pytest
import torch

import hesscale
import hesscale.engine
from hesscale.engine.ops import supported_operations
from hesscale.engine.registry import RULES, Kind, display_name, register
from hesscale.errors import HesScaleError
from tests.engine_checks import leaves

MODULES = sorted(pathlib.Path(__file__).parent.glob("test_engine_ops_*.py"))


def exercised() -> tuple[set[str], dict[str, str]]:
    names: set[str] = set()
    elsewhere: dict[str, str] = {}
    for path in MODULES:
        module = importlib.import_module(f"tests.{path.stem}")
        for _, fn, inputs, grad in module.CASES:
            out = fn(*leaves(*inputs, grad=grad))
            names.add((out[0] if isinstance(out, list | tuple) else out).grad_fn.name())
        elsewhere.update(getattr(module, "COVERED_ELSEWHERE", {}))
    return names, elsewhere


def test_every_registered_rule_is_tested():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        names, elsewhere = exercised()
    finally:
        torch.set_default_dtype(previous)
    untested = sorted(set(RULES) - names - set(elsewhere))
    assert not untested, f"rules without a test against the definition: {untested}"
    assert not set(elsewhere) - set(RULES), "COVERED_ELSEWHERE names a node without a rule"


def test_supported_operations_lists_every_rule_once():
    listed = [name for names in supported_operations().values() for name in names]
    assert sorted(listed) == sorted(display_name(name) for name in RULES)
    assert "CopySlices" in listed  # issue 17: the name the README shows


# What the engine knows about an operation is declared where its rule is registered ---------

ENGINE = pathlib.Path(hesscale.engine.__file__).parent
NODE_NAME = re.compile(r"^(torch::autograd::\w+|_?[A-Z]\w*Backwards?\d*)$")
DECLARING_CALLS = {"register", "register_unsupported"}


def _call_name(call: ast.Call) -> str | None:
    return getattr(call.func, "id", getattr(call.func, "attr", None))


def test_the_engine_names_autograd_nodes_only_where_it_registers_them():
    """Lists of node names elsewhere in the engine would let a new operation's facts (a loss
    kernel, a reshuffle, ...) live in two places; only ``register(...)`` and
    ``register_unsupported(...)`` calls may name a node."""
    offenders, declared = [], 0
    for path in sorted(ENGINE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        allowed = {
            id(arg)
            for call in ast.walk(tree)
            if isinstance(call, ast.Call) and _call_name(call) in DECLARING_CALLS
            for arg in call.args
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if NODE_NAME.match(node.value):
                    declared += id(node) in allowed
                    if id(node) not in allowed:
                        offenders.append(f"{path.name}:{node.lineno}: {node.value}")
    assert not offenders, offenders
    assert declared >= len(RULES)  # the scan sees the registrations themselves


class SquaredError(torch.autograd.Function):
    """z = sum (x - y)^2 / 2: a loss kernel torch does not know."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return ((x - y) ** 2).sum() / 2

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return g * (x - y), None


def squared_error_rule(call):
    """d z / dx = x - y, d^2 z / dx^2 = I: h_x = (x - y)^2 h_z + g_z."""
    x, y = call.node.saved_tensors
    h = 0 if call.h is None else call.h
    return ((x - y) ** 2 * h + call.g, None)


@pytest.fixture
def squared_error():
    yield SquaredError
    RULES.pop("SquaredErrorBackward", None)


@pytest.mark.parametrize("kind", [Kind.NONE, Kind.LOSS])
def test_a_new_loss_needs_one_registration(squared_error, kind):
    """Registering a loss kernel with kind=Kind.LOSS is all HesScaleGN needs to find the
    network output; the Gauss-Newton diagonal of a linear model's weight under
    sum (W x_n + b - y_n)^2 / (2 N) is sum_n x_nj^2 / N (independent of i), the bias's 1."""
    register("SquaredErrorBackward", kind=kind)(squared_error_rule)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    loss = squared_error.apply(model(x), y) / 5
    if kind == Kind.NONE:
        with pytest.raises(HesScaleError, match="where the network ends"):
            hesscale.backward(loss, gn=True)
        return
    hesscale.backward(loss, gn=True)
    expected = (x**2).sum(0).expand(2, 3) / 5
    torch.testing.assert_close(model.weight.hesscale_gn, expected)
    torch.testing.assert_close(model.bias.hesscale_gn, torch.ones(2).double())
