"""The engine's rules, one module per family of autograd nodes. Importing this registers them.

Each rule reads what its node saved, and calls the formulas in ``hesscale.rules``.
"""

from hesscale.engine.ops import (  # noqa: F401
    activations,
    arithmetic,
    attention,
    conv,
    dropout,
    embedding,
    functions,
    inplace,
    linear_algebra,
    losses,
    normalization,
    pooling,
    recurrent,
    reductions,
    sampling,
    shape,
)
from hesscale.engine.registry import RULES, display_name


def supported_operations() -> dict[str, list[str]]:
    """The autograd operations ``hesscale.backward`` handles, grouped by family.

    Returns:
        A dict from family name (e.g. ``"activations"``) to the sorted autograd node names of
        that family, as ``type(loss.grad_fn).__name__`` gives them (``grad_fn.name()`` adds
        ``torch::autograd::`` to a few of torch's own, e.g. ``CopySlices``); families in
        alphabetical order.
    """
    families: dict[str, list[str]] = {}
    for name, entry in RULES.items():
        families.setdefault(entry.family, []).append(display_name(name))
    return {family: sorted(names) for family, names in sorted(families.items())}


def supported_operations_markdown() -> str:
    """The README's list of supported autograd operations (regenerate it with
    ``python -c "from hesscale.engine.ops import supported_operations_markdown as m;
    print(m())"``; a test checks the README holds exactly this)."""
    lines = []
    for family, names in supported_operations().items():
        shown = ", ".join(f"`{name}`" for name in names)
        lines.append(f"- **{family}** ({len(names)}): {shown}")
    return "\n".join(lines)
