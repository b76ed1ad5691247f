"""The DistributedDataParallel modules constructed in this process, noted weakly.

Plain DDP (without ``find_unused_parameters`` or ``static_graph``) records no node of its own
in the autograd graph, so ``hesscale.backward`` learns which DDP module owns a parameter from
here: DDP registers the module it wraps as its submodule ``module``, which torch's global
module-registration hook reports. ``import hesscale`` installs the hook when torch is already
imported (nothing can have built a DDP module before torch was imported); importing the
engine installs it in any case.
"""

from __future__ import annotations

import itertools
import weakref

import torch

# every DDP module seen -> a number that orders them the same way on every rank
known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_numbers = itertools.count()
_installed = {"hook": None}


def note(ddp: torch.nn.Module) -> None:
    """Remember ``ddp`` (once; later calls keep its number)."""
    if ddp not in known:
        known[ddp] = next(_numbers)


def _on_registration(module: torch.nn.Module, name: str, submodule: object) -> None:
    from torch.nn.parallel import DistributedDataParallel

    if name == "module" and isinstance(module, DistributedDataParallel):
        note(module)


def install() -> None:
    """Install the registration hook (once)."""
    if _installed["hook"] is None:
        register = torch.nn.modules.module.register_module_module_registration_hook
        _installed["hook"] = register(_on_registration)


install()
