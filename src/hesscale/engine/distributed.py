"""Data parallel training: the diagonals of DDP-wrapped parameters are averaged over ranks,
as DistributedDataParallel averages the gradients.

With a mean-reduced loss on each rank's share of the batch, the gradient of the global loss is
the mean of the per-rank gradients; the HesScale diagonal is additive over samples in the same
way (each sample's entries are separate, and the parameters sum what their samples send back),
so the global diagonal is the mean of the per-rank diagonals. After the backward pass, one
all-reduce per DDP module and (dtype, device) averages all its diagonals at once, exactly when
DDP synchronises the gradients (not inside ``no_sync()``, where both accumulate locally).

Every rank issues the same collectives over the same tensors in the same order, whatever its
own graph holds: all parameters of the module, in the module's order, each rank contributing
what it has for each (this pass's diagonal, plus what accumulated since the gradient was last
zeroed) and zeros for the parameters its graph did not reach, as DDP does for gradients.

Which DDP module a graph belongs to: DDP records its own node in the graph
(``_DDPSinkBackward``, with ``find_unused_parameters`` or on a static graph's first
iteration), which names it. Plain DDP records none (every rank then uses every parameter), so
DDP modules are also noted, weakly, when they are constructed (``hesscale.ddp_modules``), and
one applies when the graph reaches its parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hesscale import accumulation, ddp_modules
from hesscale.engine.registry import Kind
from hesscale.internals import (
    ddp_of_output_node,
    ddp_parameters,
    ddp_process_group,
    ddp_syncs_this_backward,
)


def active() -> bool:
    """Whether this process is one of several in a torch.distributed job."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def modules_of(graph) -> list[torch.nn.Module]:
    """The DDP modules whose forward pass recorded part of ``graph`` (a ``Graph``), in an order
    every rank shares."""
    found = {}
    for node in graph.nodes_of_kind(Kind.DDP_OUTPUT):
        ddp = ddp_of_output_node(node)
        if ddp is not None:
            ddp_modules.note(ddp)
            found[id(ddp)] = ddp
    leaves = {id(leaf) for leaf in graph.leaves.values()}
    for ddp in list(ddp_modules.known.keys()):
        if id(ddp) not in found and any(id(p) in leaves for p in ddp_parameters(ddp)):
            found[id(ddp)] = ddp
    return sorted(found.values(), key=lambda ddp: ddp_modules.known[ddp])


class Averaging:
    """The averaging of one backward pass: built before autograd runs (what each parameter
    carries from earlier passes depends on the gradient it has then), applied after."""

    def __init__(self, modules: Sequence[torch.nn.Module], variants: Sequence[str]) -> None:
        self.modules = [ddp for ddp in modules if ddp_syncs_this_backward(ddp)]
        self.variants = tuple(variants)
        # (id(p), variant) -> the diagonal p carries into this pass (None: zeros)
        self.carried: dict[tuple[int, str], Tensor | None] = {}
        for ddp in self.modules:
            for p in ddp_parameters(ddp):
                for variant in self.variants:
                    keep = accumulation.continues(p, variant)
                    self.carried[id(p), variant] = getattr(p, variant) if keep else None

    def apply(self, reached: Callable[[Tensor, str], bool]) -> None:
        """Average the diagonals; ``reached(p, variant)``: whether this pass wrote
        ``p.<variant>`` (which then holds everything this rank contributes)."""
        for ddp in self.modules:
            self._average(ddp, reached)

    def _average(self, ddp: torch.nn.Module, reached: Callable[[Tensor, str], bool]) -> None:
        group = ddp_process_group(ddp)
        world = torch.distributed.get_world_size(group)
        slots: dict[tuple, list[tuple[Tensor, str, Tensor | None]]] = {}
        for p in ddp_parameters(ddp):
            for variant in self.variants:
                local = getattr(p, variant) if reached(p, variant) else self.carried[id(p), variant]
                slots.setdefault((p.dtype, p.device), []).append((p, variant, local))
        for entries in slots.values():
            flat = torch.cat(
                [
                    (torch.zeros_like(p) if local is None else local).reshape(-1)
                    for p, _, local in entries
                ]
            )
            torch.distributed.all_reduce(flat, group=group)
            flat /= world
            offset = 0
            for p, variant, _ in entries:
                averaged = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                _write(p, variant, averaged, in_place=reached(p, variant))


def _write(p: Tensor, variant: str, averaged: Tensor, in_place: bool) -> None:
    if in_place:
        getattr(p, variant).copy_(averaged)  # the same tensor: its accumulation record holds
    elif p.grad is not None:  # a parameter this rank did not use: it gets what DDP gives p.grad
        diagonal = averaged.clone()
        setattr(p, variant, diagonal)
        accumulation.record(p, variant, diagonal)
