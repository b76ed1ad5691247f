"""Silencing torch's warning about BackPACK's hook on a first layer, during hesscale's own calls.

BackPACK hooks every module with ``register_full_backward_hook``. On a module none of whose
inputs needs a gradient (the first layer of every network) torch warns at every backward pass
that the hook fires with respect to the outputs. That is exactly what HesScale needs there, so
the message is noise; but torch raises it inside the autograd engine, outside any call of
hesscale's, so no ``with warnings.catch_warnings()`` can enclose it. Instead, one filter entry
for this one message is added when a backward pass served by HesScale starts (at its first
module) and removed when that pass ends or fails; ``hook_warning_hidden()`` does the same around
a block (hesscale's own backward passes on extended models: estimators, engine, optimizers,
experiments). Importing hesscale changes no filter, and the user's own backward passes through
extended models without HesScale still show the warning. Depends on nothing but the standard
library, so every layer may use it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module"


class HookWarningSilenced:
    """Ignore HOOK_WARNING between ``start()`` and ``stop()``; touch no other filter.

    ``start()`` puts one entry, built as ``warnings.filterwarnings`` builds it, first in
    ``warnings.filters``; ``stop()`` removes that same entry (by identity), so the user's own
    filters, equal ones included, stay as and where they are. The version counter that
    ``filterwarnings`` bumps is left alone on purpose: it invalidates the registries of warnings
    already shown, and an "ignore" filter neither needs that nor records anything in them, so
    both the insertion and the removal are exact. Like ``warnings.catch_warnings`` this edits
    the process-wide list: not thread-safe either.
    """

    def __init__(self) -> None:
        self._entry: tuple | None = None

    def start(self) -> None:
        if self._entry is None:
            self._entry = ("ignore", re.compile(HOOK_WARNING, re.I), UserWarning, None, 0)
            warnings.filters.insert(0, self._entry)

    def stop(self) -> None:
        entry, self._entry = self._entry, None
        if entry is None:
            return
        # gone already if a catch_warnings block around the pass has restored the list
        for i, other in enumerate(warnings.filters):
            if other is entry:
                del warnings.filters[i]
                return


@contextmanager
def hook_warning_hidden() -> Iterator[None]:
    """Hide HOOK_WARNING (only it) inside the block: for backward passes that hesscale's own code
    runs on extended models outside HesScale (the estimators, the cost benchmark). Unlike
    ``warnings.catch_warnings`` it does not make warnings already shown elsewhere show again."""
    silenced = HookWarningSilenced()
    silenced.start()
    try:
        yield
    finally:
        silenced.stop()
