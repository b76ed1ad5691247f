"""Which rule handles which autograd node, and what else the engine must know about it.

Each ops module registers its rules here. A rule maps one node of the recorded graph (a
``NodeCall``: what the node saved, the diagonal and the gradient w.r.t. each of its outputs) to
one diagonal per input of the node, in the order of ``node.next_functions``: the input's shape
(or the output's broadcast shape, which the engine sums down to the input's), or ``None`` for a
zero diagonal or an input that needs none.

Everything the engine knows about an operation is declared here, where its rule is registered:
its ``kind`` (a reshuffle, a 0/1 Jacobian, entrywise linear, a loss kernel, what a loss does
after its kernels, ...) and its family. The graph code asks ``kind_of(node)``; no other module
of the engine names an autograd node.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from hesscale.engine.call import NodeCall

Rule = Callable[[NodeCall], Sequence[Tensor | None]]
Check = Callable[[object], str | None]


class Kind(enum.Flag):
    """Facts about an operation that the engine uses besides its rule (combine with ``|``)."""

    NONE = 0
    #: every Jacobian entry is 0 or 1 and there is no curvature: h_x = J^T h_z, the node's own
    #: backward formula applied to h_z (views, indexing, copies, sums, routing reductions, ...)
    ZERO_ONE = enum.auto()
    #: one input, each output entry a copy of one input entry (views, transposes, reshapes):
    #: the engine may apply h_x = J^T h_z to each contribution to h_z as it arrives
    RESHUFFLE = enum.auto()
    #: each input entry reaches one output entry, (piecewise) linearly or multilinearly:
    #: h = (J^T h_z) * (J^T 1)
    ENTRYWISE_LINEAR = enum.auto()
    #: linear in its first input (x / y): entrywise linear when no other input needs a gradient
    LINEAR_IN_FIRST = enum.auto()
    #: a loss function's kernel: its inputs are network outputs (HesScaleGN)
    LOSS = enum.auto()
    #: a negative log-likelihood kernel: its input must be log-probabilities (a log-softmax,
    #: which then belongs to the loss)
    NLL_LOSS = enum.auto()
    #: log-softmax: turns scores into log-probabilities; at the top of a loss its input is the
    #: network output
    LOG_PROBABILITIES = enum.auto()
    #: what a loss does after its kernels (reduce, weight, combine terms, reshape): HesScaleGN
    #: looks through it for the loss kernels
    LOSS_COMBINER = enum.auto()
    #: changes only the layout of the entries: HesScaleGN looks through it between an NLL
    #: kernel and its log-softmax
    LAYOUT = enum.auto()
    #: handles complex tensors as pairs of real numbers: the diagonal of a complex tensor is
    #: carried as a complex tensor whose real and imaginary parts are the diagonals w.r.t. the
    #: real and imaginary parts. A graph holding complex tensors is accepted only where every
    #: node that produces or reads one is declared so.
    COMPLEX_READY = enum.auto()
    #: an identity inserted by nn.Module full backward hooks (BackPACK-extended models)
    MODULE_HOOK = enum.auto()
    #: DistributedDataParallel's output sink (with find_unused_parameters or static_graph):
    #: names the DDP module whose parameters the graph differentiates
    DDP_OUTPUT = enum.auto()


@dataclass(frozen=True)
class OperationRule:
    """``rule`` computes the diagonals; ``check(node)``, run on every node before the backward
    pass starts, returns why a configuration is not supported (or None); ``kind`` holds what
    else the engine needs to know; ``family`` groups operations for the documentation."""

    rule: Rule
    check: Check | None = None
    family: str = ""
    kind: Kind = Kind.NONE


RULES: dict[str, OperationRule] = {}
#: autograd nodes without a rule, with what to do instead (shown in the error)
UNSUPPORTED: dict[str, str] = {}


def register(
    *names: str, check: Check | None = None, kind: Kind = Kind.NONE, family: str | None = None
) -> Callable[[Rule], Rule]:
    """Register ``rule`` for the autograd nodes called ``names`` (``grad_fn.name()``).

    Args:
        names: the autograd node names the rule handles.
        check: returns why a node's configuration is not supported, or None.
        kind: what else the engine needs to know about these nodes (see ``Kind``).
        family: the group the operations are listed under; defaults to the name of the module
            that registers the rule.

    Returns:
        A decorator that registers the rule and returns it unchanged (decorators stack, so one
        function may be registered for several groups of nodes with different kinds).

    Raises:
        ValueError: when a node already has a rule.
    """

    def decorate(rule: Rule) -> Rule:
        group = family if family is not None else rule.__module__.rsplit(".", 1)[-1]
        for name in names:
            if name in RULES:
                raise ValueError(f"Two rules for the autograd node {name}")
            RULES[name] = OperationRule(rule, check, group, kind)
        return rule

    return decorate


def register_unsupported(*names: str, advice: str) -> None:
    """Declare autograd nodes that have no rule, with ``advice`` for the user (shown in the
    error raised when a graph holds one)."""
    for name in names:
        if name in RULES:
            raise ValueError(f"{name} has a rule; it cannot be declared unsupported")
        UNSUPPORTED[name] = advice


def kind_of(node: object) -> Kind:
    """What the registry declares about ``node`` (an autograd node); Kind.NONE without a rule."""
    entry = RULES.get(node.name())
    return Kind.NONE if entry is None else entry.kind


def display_name(name: str) -> str:
    """A node's name without the ``torch::autograd::`` prefix that ``grad_fn.name()`` gives
    a few of torch's own nodes (``CopySlices``, ``CopyBackwards``, ...)."""
    return name.removeprefix("torch::autograd::")
