"""The recorded graph, read once before the backward pass: its nodes, leaves and checks.

Walking it first lets every unsupported operation raise before autograd computes anything,
and tells HesScaleGN where the network ends and the loss begins.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import torch
from torch import Tensor

from hesscale.engine.registry import (
    RULES,
    UNSUPPORTED,
    Kind,
    OperationRule,
    Rule,
    kind_of,
    register_unsupported,
)
from hesscale.errors import HesScaleError, UnsupportedOperationError
from hesscale.internals import (
    accumulated_variable,
    forward_traceback,
    output_count,
    output_dtype,
    saved_under_checkpoint,
)

Node = torch.autograd.graph.Node
Edge = tuple[Node, int]


class Graph:
    """The nodes reachable from ``root`` (a loss's ``grad_fn``), each reached once, read and
    checked in the constructor.

    ``leaves`` maps each AccumulateGrad node to its leaf tensor; ``edges`` maps every other node
    to its ``next_functions``; ``parents`` maps each node to the node that reached it first on a
    shortest path from the root (for error messages); ``rules`` maps every non-leaf node to its
    rule; ``reshuffles`` maps each reshuffle (Kind.RESHUFFLE, one input) to its input edge;
    ``has_module_hooks`` says whether nn.Module full backward hooks recorded identity nodes.

    Raises:
        UnsupportedOperationError: for the first node without a rule (or whose configuration
            its rule does not cover), before anything is computed.
    """

    def __init__(self, root: Node) -> None:
        self.root = root
        self.edges: dict[Node, tuple[Edge, ...]] = {}
        self.leaves: dict[Node, Tensor] = {}
        self.parents: dict[Node, Node | None] = {root: None}
        queue = deque([root])
        while queue:
            node = queue.popleft()
            variable = accumulated_variable(node)
            if variable is not None:
                self.leaves[node] = variable
                continue
            edges = node.next_functions
            self.edges[node] = edges
            for child, _ in edges:
                if child is not None and child not in self.parents:
                    self.parents[child] = node
                    queue.append(child)
        self.rules: dict[Node, Rule] = {}
        self.kinds: dict[Node, Kind] = {}
        self.reshuffles: dict[Node, Edge] = {}
        for leaf in self.leaves.values():
            if leaf.is_complex():
                raise UnsupportedOperationError(_complex_message(f"a leaf of dtype {leaf.dtype}"))
        complex_producers: set[Node] = set()
        for node in self.edges:
            self._refuse_checkpointed(node)
            entry = RULES.get(node.name())
            if self._has_complex_output(node):
                if entry is None or Kind.COMPLEX_READY not in entry.kind:
                    raise UnsupportedOperationError(
                        _complex_message(f"{node.name()}, reached through {self.path_to(node)}")
                    )
                complex_producers.add(node)
            reason = None if entry is None or entry.check is None else entry.check(node)
            if entry is None or reason is not None:
                raise UnsupportedOperationError(self._unsupported(node, entry, reason))
            self.rules[node] = entry.rule
            self.kinds[node] = entry.kind
            if Kind.RESHUFFLE in entry.kind and len(self.edges[node]) == 1:
                self.reshuffles[node] = self.edges[node][0]
        if complex_producers:
            self._refuse_complex_readers(complex_producers)
        self.has_module_hooks = any(Kind.MODULE_HOOK in kind for kind in self.kinds.values())

    def path_to(self, node: Node) -> str:
        """The chain of node names from the root down to ``node``."""
        names = []
        while node is not None:
            names.append(node.name())
            node = self.parents[node]
        return " -> ".join(reversed(names))

    @staticmethod
    def _has_complex_output(node: Node) -> bool:
        return any(output_dtype(node, i).is_complex for i in range(output_count(node)))

    def _refuse_complex_readers(self, producers: set[Node]) -> None:
        """Raise for a node that reads a complex tensor without handling complex tensors."""
        for node, edges in self.edges.items():
            if Kind.COMPLEX_READY in self.kinds[node]:
                continue
            for child, nr in edges:
                if child in producers and output_dtype(child, nr).is_complex:
                    raise UnsupportedOperationError(
                        _complex_message(
                            f"{node.name()} reading a complex tensor, reached through "
                            f"{self.path_to(node)}"
                        )
                    )

    def _refuse_checkpointed(self, node: Node) -> None:
        """Raise for nodes saved under non-reentrant checkpointing."""
        if saved_under_checkpoint(node):
            raise UnsupportedOperationError(
                f"The autograd operation {node.name()} (reached through {self.path_to(node)}) "
                "was recorded under activation checkpointing (torch.utils.checkpoint with "
                "use_reentrant=False), which lets each saved tensor be read only once, by "
                "autograd; HesScale needs them too. Nothing has been computed. Run that "
                "block without checkpointing for the passes that need diagonals."
            )

    def nodes_of_kind(self, kind: Kind) -> list[Node]:
        """The graph's nodes that the registry declares ``kind``."""
        return [node for node, declared in self.kinds.items() if kind in declared]

    def _unsupported(self, node: Node, entry: OperationRule | None, reason: str | None) -> str:
        name = node.name()
        problem = "has no HesScale rule" if entry is None else f"is not supported here: {reason}"
        message = (
            f"The autograd operation {name} {problem}. It was reached from the loss through "
            f"{self.path_to(node)}."
        )
        if name in UNSUPPORTED:
            message += " " + UNSUPPORTED[name]
        traceback = forward_traceback(node)
        if traceback:
            message += f"\nIt was recorded in the forward pass at:\n{traceback.rstrip()}"
        else:
            message += (
                " To see the line of the forward pass that recorded it, run the forward "
                "pass under torch.autograd.detect_anomaly(check_nan=False)."
            )
        message += (
            " hesscale.supported_operations() lists every supported operation; a custom "
            "autograd.Function can get a rule with hesscale.engine.register."
        )
        return message


def _complex_message(where: str) -> str:
    return (
        f"HesScale does not support this use of complex tensors (found {where}). Complex "
        "tensors are supported as pairs of real numbers through torch.view_as_complex, "
        "products, views and torch.view_as_real (rotary embeddings written with complex "
        "numbers, for instance); nothing else has a rule for them. Nothing has been computed. "
        "Work with real tensors (e.g. torch.view_as_real) for the parts that need diagonals."
    )


# Nodes that hide the operations they stand for, and what to do instead.
register_unsupported(
    "CompiledFunctionBackward",
    advice=(
        "It stands for a region compiled with torch.compile, whose operations autograd does not "
        "record one by one, so HesScale cannot see them. Compile the whole step instead, "
        "hesscale.compile(fn) with fn computing the loss (it traces the diagonal too), or run "
        "the uncompiled model (torch.compile(model) keeps it as model._orig_mod)."
    ),
)
register_unsupported(
    "CheckpointFunctionBackward",
    advice=(
        "It stands for a block under reentrant activation checkpointing "
        "(torch.utils.checkpoint with use_reentrant=True), whose operations autograd records "
        "only during the backward pass. Run that block without checkpointing."
    ),
)


# Operations left without a rule on purpose, and why (docs/supported.md lists them).
register_unsupported(
    "CtcLossBackward0",
    advice=(
        "F.ctc_loss has no rule: its exact curvature needs a second forward-backward pass over "
        "the alignment lattice, costing more than the rest of the pass, and torch cannot "
        "differentiate its backward to check one against. Compute diagonals with a loss that "
        "has a rule (e.g. cross-entropy on aligned targets) where you need them."
    ),
)


def operation_names(tensor: Tensor) -> set[str]:
    """The names of every autograd node in the graph that produced ``tensor`` (e.g. to compare
    with ``hesscale.supported_operations()``, or to see what a device or autocast records)."""
    names, seen, stack = set(), set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(child for child, _ in node.next_functions)
    return names


# HesScaleGN: where the network ends --------------------------------------------------------

RECOGNIZED_LOSSES = (
    "cross-entropy, NLL, KL divergence of a log-softmax, MSE, BCE, Huber, smooth L1, L1, soft "
    "margin, multi-margin"
)


def output_edges(outputs: Tensor | Iterable[Tensor]) -> list[Node]:
    """The nodes that produced the tensors a user named as the network output."""
    tensors = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    nodes = []
    for t in tensors:
        if not isinstance(t, Tensor) or t.grad_fn is None:
            raise HesScaleError(
                "output= names the network output(s): tensors computed from the parameters "
                f"(with a grad_fn); got {type(t).__name__}"
                + ("" if not isinstance(t, Tensor) else " without a grad_fn")
                + "."
            )
        nodes.append(t.grad_fn)
    return nodes


def detect_network_outputs(graph: Graph) -> list[Node]:
    """The producers of the inputs of the loss functions at the top of the graph.

    From the root, pass through what combines loss terms (sums, means, weights, reshapes) down
    to loss kernels (NLL, MSE, BCE, ...) and log-softmaxes (cross-entropy with probability
    targets or label smoothing): their inputs are the network outputs; a log-softmax feeding an
    NLL belongs to the loss. Raises if a path from the root meets anything else first.
    """
    found: list[Node] = []
    seen: set[Node] = set()
    queue = deque([graph.root])
    while queue:
        node = queue.popleft()
        if node in seen or node in graph.leaves:
            continue
        seen.add(node)
        name, kind = node.name(), graph.kinds[node]
        if Kind.NLL_LOSS in kind:
            for child, _ in graph.edges[node]:
                if child is None or child in graph.leaves:
                    continue
                source = child
                while Kind.LAYOUT in kind_of(source):  # cross-entropy over extra dimensions
                    seen.add(source)
                    source = graph.edges[source][0][0]
                if Kind.LOG_PROBABILITIES not in kind_of(source):
                    raise HesScaleError(
                        f"HesScaleGN: the input of {name} does not come from a log_softmax "
                        f"(it comes from {source.name()}), so its Gauss-Newton diagonal would be "
                        "zero. Use F.log_softmax or F.cross_entropy, or name the network output "
                        "with hesscale.backward(loss, gn=True, output=...)."
                    )
                queue.append(source)  # the log-softmax: part of the loss
        elif kind & (Kind.LOSS | Kind.LOG_PROBABILITIES):
            found.extend(child for child, _ in graph.edges[node] if child is not None)
        elif Kind.LOSS_COMBINER in kind:
            queue.extend(child for child, _ in graph.edges[node] if child is not None)
        else:
            raise HesScaleError(
                "HesScaleGN needs to know where the network ends and the loss begins, and the "
                f"loss reaches {name} ({graph.path_to(node)}) before any loss function it "
                f"recognises ({RECOGNIZED_LOSSES}). Name the network output(s): "
                "hesscale.backward(loss, gn=True, output=logits)."
            )
    if not found:
        raise HesScaleError(
            f"HesScaleGN found no loss function in the graph ({RECOGNIZED_LOSSES}). Name the "
            "network output(s): hesscale.backward(loss, gn=True, output=logits)."
        )
    return found


def below(graph: Graph, starts: Iterable[Node]) -> set[Node]:
    """``starts`` and every node they reach: the network, for HesScaleGN."""
    reached: set[Node] = set()
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node in reached or node not in graph.edges:
            continue
        reached.add(node)
        stack.extend(child for child, _ in graph.edges[node] if child is not None)
    return reached
