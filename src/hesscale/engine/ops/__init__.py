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
    shape,
)
