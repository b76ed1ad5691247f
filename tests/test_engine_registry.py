"""Every rule in the engine's registry is exercised by a test against the definition.

Each ``tests/test_engine_ops_*.py`` module lists its per-operation ``CASES`` (id, fn, inputs,
grad); nodes that no single operation on leaves records (in-place variants, fused kernels that
only appear inside a model) are listed in that module's ``COVERED_ELSEWHERE``, mapping the node
name to the test that checks it against an oracle.
"""

from __future__ import annotations

import importlib
import pathlib

import torch

from hesscale.engine.registry import RULES, display_name, supported_operations
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
