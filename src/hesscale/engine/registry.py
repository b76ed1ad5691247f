"""Which rule handles which autograd node. Each ops module registers its rules here.

A rule maps one node of the recorded graph (a ``NodeCall``: what the node saved, the diagonal
and the gradient w.r.t. each of its outputs) to one diagonal per input of the node, in the
order of ``node.next_functions``: the input's shape (or the output's broadcast shape, which the
engine sums down to the input's), or ``None`` for a zero diagonal or an input that needs none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from hesscale.engine.call import NodeCall

Rule = Callable[[NodeCall], Sequence[Tensor | None]]
Check = Callable[[object], str | None]


@dataclass(frozen=True)
class OperationRule:
    """``rule`` computes the diagonals; ``check(node)``, run on every node before the backward
    pass starts, returns why a configuration is not supported (or None)."""

    rule: Rule
    check: Check | None = None
    family: str = ""


RULES: dict[str, OperationRule] = {}


def register(*names: str, check: Check | None = None) -> Callable[[Rule], Rule]:
    """Register ``rule`` for the autograd nodes called ``names`` (``grad_fn.name()``)."""

    def decorate(rule: Rule) -> Rule:
        family = rule.__module__.rsplit(".", 1)[-1]
        for name in names:
            if name in RULES:
                raise ValueError(f"Two rules for the autograd node {name}")
            RULES[name] = OperationRule(rule, check, family)
        return rule

    return decorate


def display_name(name: str) -> str:
    """A node's name without the ``torch::autograd::`` prefix that ``grad_fn.name()`` gives
    a few of torch's own nodes (``CopySlices``, ``CopyBackwards``, ...)."""
    return name.removeprefix("torch::autograd::")


def supported_operations() -> dict[str, list[str]]:
    """The autograd nodes ``hesscale.backward`` handles, grouped by family (sorted), by the
    names ``type(loss.grad_fn).__name__`` gives (``grad_fn.name()`` adds
    ``torch::autograd::`` to a few of torch's own, e.g. ``CopySlices``)."""
    from hesscale.engine import ops  # noqa: F401  (registers every rule)

    families: dict[str, list[str]] = {}
    for name, entry in RULES.items():
        families.setdefault(entry.family, []).append(display_name(name))
    return {family: sorted(names) for family, names in sorted(families.items())}


def supported_operations_markdown() -> str:
    """The README's list of supported autograd operations (regenerate it with
    ``python -c "from hesscale.engine.registry import supported_operations_markdown as m;
    print(m())"``; a test checks the README holds exactly this)."""
    lines = []
    for family, names in supported_operations().items():
        shown = ", ".join(f"`{name}`" for name in names)
        lines.append(f"- **{family}** ({len(names)}): {shown}")
    return "\n".join(lines)
