"""Which networks ``hesscale.backward`` can take yet: tests of learners whose diagonals come
from the engine are expected to fail (strictly) on networks with operations it has no rule
for, and run as ordinary tests once the rules land (the convolution, pooling and BatchNorm
rules of the engine-cnn work)."""

from __future__ import annotations

import pytest
import torch


def missing_rules(model: torch.nn.Module, input_shape: tuple[int, ...]) -> set[str]:
    """Autograd operations of ``model``'s cross-entropy graph without an engine rule."""
    import hesscale

    supported = {name for names in hesscale.supported_operations().values() for name in names}
    output = model(torch.zeros(2, *input_shape))
    loss = torch.nn.functional.cross_entropy(output, torch.zeros(2, dtype=torch.long))
    seen, stack, names = set(), [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack += [next_node for next_node, _ in node.next_functions]
    return {n for n in names - supported if "AccumulateGrad" not in n}


def engine_rules_needed(model: torch.nn.Module, input_shape: tuple[int, ...]):
    """A strict xfail mark while the engine lacks a rule ``model`` needs (else no mark)."""
    missing = missing_rules(model, input_shape)
    return pytest.mark.xfail(
        bool(missing), strict=True, reason=f"needs engine-cnn rules: {sorted(missing)}"
    )
