"""Data parallel training: the diagonals of DDP-wrapped parameters are averaged over ranks,
as DistributedDataParallel averages the gradients.

With a mean-reduced loss on each rank's share of the batch, the gradient of the global loss is
the mean of the per-rank gradients; the HesScale diagonal is additive over samples in the same
way (each sample's entries are separate, and the parameters sum what their samples send back),
so the global diagonal is the mean of the per-rank diagonals. After the backward pass, one
all-reduce per DDP module averages all its diagonals at once (flattened into one buffer per
dtype and device), exactly when DDP synchronises the gradients (not inside ``no_sync()``,
where both accumulate locally).

hesscale finds the DDP modules itself (the training loop stays the plain one): the first
backward pass that reaches a parameter not seen before looks through the live objects for
DistributedDataParallel instances, once, and remembers which parameters each one owns.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterable

import torch
from torch import Tensor

from hesscale.internals import ddp_parameters, ddp_process_group, ddp_syncs_this_backward

# id(parameter) -> (the parameter, its DDP module), both weakly; ids are checked on lookup
_owners: dict[int, tuple[weakref.ref, weakref.ref]] = {}
_seen: dict[int, weakref.ref] = {}  # parameters looked for already


def active() -> bool:
    """Whether this process is one of several in a torch.distributed job."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _remembered(table: dict, p: Tensor):
    entry = table.get(id(p))
    if entry is None:
        return None
    ref = entry[0] if isinstance(entry, tuple) else entry
    return entry if ref() is p else None


def _find_owners(params: Iterable[Tensor]) -> None:
    new = [p for p in params if _remembered(_seen, p) is None]
    if not new:
        return
    from torch.nn.parallel import DistributedDataParallel

    for obj in gc.get_objects():
        if issubclass(type(obj), DistributedDataParallel):  # type(): no __class__ lookups
            for p in ddp_parameters(obj):
                _owners[id(p)] = (weakref.ref(p), weakref.ref(obj))
    for p in new:
        _seen[id(p)] = weakref.ref(p)


def _owner(p: Tensor) -> torch.nn.Module | None:
    entry = _remembered(_owners, p)
    return None if entry is None else entry[1]()


def average_over_ranks(leaves: Iterable[Tensor], variants: Iterable[str]) -> None:
    """Average ``leaf.<variant>`` over the ranks of each DDP module that owns the leaves."""
    leaves = [leaf for leaf in leaves if isinstance(leaf, torch.nn.Parameter)]
    _find_owners(leaves)
    modules: dict[int, torch.nn.Module] = {}
    for leaf in leaves:
        ddp = _owner(leaf)
        if ddp is not None and ddp_syncs_this_backward(ddp):
            modules[id(ddp)] = ddp
    for ddp in modules.values():
        _average(ddp, list(variants))


def _average(ddp: torch.nn.Module, variants: list[str]) -> None:
    """One all-reduce per (dtype, device) for all diagonals of ``ddp``'s parameters; a
    parameter without a diagonal on this rank (unused here) contributes zeros."""
    group = ddp_process_group(ddp)
    world = torch.distributed.get_world_size(group)
    slots: dict[tuple, list[tuple[Tensor, str]]] = {}
    for p in ddp_parameters(ddp):
        for variant in variants:
            slots.setdefault((p.dtype, p.device), []).append((p, variant))
    for entries in slots.values():
        flat = torch.cat(
            [getattr(p, variant, torch.zeros_like(p)).reshape(-1) for p, variant in entries]
        )
        torch.distributed.all_reduce(flat, group=group)
        flat /= world
        offset = 0
        for p, variant in entries:
            n = p.numel()
            averaged = flat[offset : offset + n].view_as(p)
            offset += n
            previous = getattr(p, variant, None)
            if previous is not None:
                previous.copy_(averaged)  # keeps its gradient stamp
            elif p.grad is not None:
                setattr(p, variant, averaged.clone())
