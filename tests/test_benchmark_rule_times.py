"""benchmarks/rule_times.py: the timers see every rule that runs and leave the registry as it
was; the table's parts add up to the step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import hesscale
from hesscale.engine.registry import RULES

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import rule_times  # noqa: E402


def test_timed_rules_time_each_rule_that_runs_and_restore_the_registry():
    before = dict(RULES)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with rule_times.timed_rules() as totals:
        assert RULES["AddmmBackward0"] is not before["AddmmBackward0"]
        loss = nn.functional.cross_entropy(model(torch.randn(5, 3)), torch.tensor([0, 1, 0, 1, 1]))
        hesscale.backward(loss)
    assert RULES == before and all(RULES[k] is before[k] for k in before)
    assert {"AddmmBackward0", "TanhBackward0", "LogSoftmaxBackward0"} <= set(totals)
    assert all(seconds >= 0 for seconds in totals.values())
    assert model[0].weight.hesscale.shape == model[0].weight.shape  # the rules still ran


def test_the_parts_split_the_step_into_plain_rules_and_the_rest(capsys):
    result = rule_times.measure("mlp", width=16, depth=2, batch=8, gn=False, rounds=3)
    rows = dict(rule_times.parts(result))
    parts = sum(ms for label, ms in rows.items() if label.startswith(("  rule", "  engine")))
    assert "  rule AddmmBackward0" in rows and "  rule TanhBackward0" in rows
    assert all(ms > 0 for label, ms in rows.items() if "engine" not in label)
    assert parts + rows["plain forward+backward"] == pytest.approx(rows["HesScale step"])
    rule_times.main(["--model", "mlp", "--width", "16", "--batch", "8", "--rounds", "2"])
    table = capsys.readouterr().out
    assert "rule AddmmBackward0" in table and "engine and the rest" in table
