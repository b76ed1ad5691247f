"""The recorded graph, read once before the backward pass: its nodes, leaves and checks.

Walking it first lets every unsupported operation raise before autograd computes anything,
and tells HesScaleGN where the network ends and the loss begins.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import torch
from torch import Tensor

from hesscale.engine.registry import RULES
from hesscale.errors import HesScaleError, UnsupportedOperationError
from hesscale.internals import accumulated_variable, forward_traceback

Node = torch.autograd.graph.Node
Edge = tuple[Node, int]


class Graph:
    """The nodes reachable from ``root`` (a loss's ``grad_fn``), each reached once.

    ``leaves`` maps each AccumulateGrad node to its leaf tensor; ``edges`` maps every other node
    to its ``next_functions``; ``parents`` maps each node to the node that reached it first on a
    shortest path from the root (for error messages); after ``check_supported``, ``rules`` maps
    every non-leaf node to its rule.
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

    def path_to(self, node: Node) -> str:
        """The chain of node names from the root down to ``node``."""
        names = []
        while node is not None:
            names.append(node.name())
            node = self.parents[node]
        return " -> ".join(reversed(names))

    def check_supported(self) -> None:
        """Raise UnsupportedOperationError for the first node without a rule (or whose
        configuration its rule does not cover), before anything is computed."""
        self.has_module_hooks = False
        self.rules = {}
        self.reshuffles = {}
        for node in self.edges:
            name = node.name()
            self.has_module_hooks |= name == "BackwardHookFunctionBackward"
            if name in RESHUFFLES and len(self.edges[node]) == 1:
                self.reshuffles[node] = self.edges[node][0]
            entry = RULES.get(name)
            reason = None if entry is None or entry.check is None else entry.check(node)
            if entry is not None and reason is None:
                self.rules[node] = entry.rule
                continue
            problem = (
                "has no HesScale rule" if entry is None else f"is not supported here: {reason}"
            )
            message = (
                f"The autograd operation {name} {problem}. It was reached from the loss through "
                f"{self.path_to(node)}."
            )
            if name in OPAQUE_NODES:
                message += " " + OPAQUE_NODES[name]
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
            raise UnsupportedOperationError(message)


# One input, one output, each output entry a copy of one input entry (views, transposes,
# reshapes): linear without curvature, so h_x = J^T h_z may be applied to each contribution to
# h_z as it arrives (their sum gives the same), instead of in a hook of their own.
RESHUFFLES = frozenset(
    {
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "AliasBackward0",
        "TBackward0",
        "TransposeBackward0",
        "PermuteBackward0",
        "UnsqueezeBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "CloneBackward0",
    }
)

# Nodes that hide the operations they stand for, and what to do instead.
OPAQUE_NODES = {
    "CompiledFunctionBackward": (
        "It stands for a region compiled with torch.compile, whose operations autograd does not "
        "record one by one, so HesScale cannot see them. Compile the whole step instead, "
        "hesscale.compile(fn) with fn computing the loss (it traces the diagonal too), or run "
        "the uncompiled model (torch.compile(model) keeps it as model._orig_mod)."
    ),
    "CheckpointFunctionBackward": (
        "It stands for a block under reentrant activation checkpointing "
        "(torch.utils.checkpoint with use_reentrant=True), whose operations autograd records "
        "only during the backward pass. Run that block without checkpointing."
    ),
}


# HesScaleGN: where the network ends --------------------------------------------------------

# Kernels of loss functions: their inputs are network outputs (NLL's may be a log-softmax).
LOSS_KERNELS = frozenset(
    {
        "NllLossBackward0",
        "NllLoss2DBackward0",
        "MseLossBackward0",
        "BinaryCrossEntropyWithLogitsBackward0",
        "BinaryCrossEntropyBackward0",
        "HuberLossBackward0",
        "SmoothL1LossBackward0",
        "SoftMarginLossBackward0",
        "MultiMarginLossBackward0",
        "AbsBackward0",  # F.l1_loss: torch records mean(abs(x - y)), no kernel of its own
    }
)
RECOGNISED_LOSSES = (
    "cross-entropy, NLL, KL divergence of a log-softmax, MSE, BCE, Huber, smooth L1, L1, soft "
    "margin, multi-margin"
)
NLL_KERNELS = frozenset({"NllLossBackward0", "NllLoss2DBackward0"})
RESHAPES = frozenset(
    {"ViewBackward0", "UnsafeViewBackward0", "SqueezeBackward0", "SqueezeBackward1",
     "UnsqueezeBackward0", "TransposeBackward0", "PermuteBackward0",
     "BackwardHookFunctionBackward"}
)  # fmt: skip
LOG_SOFTMAX = "LogSoftmaxBackward0"

# What a loss does after its kernels: reduce, weight, combine terms, reshape.
LOSS_COMBINERS = frozenset(
    {
        "SumBackward0",
        "SumBackward1",
        "MeanBackward0",
        "MeanBackward1",
        "NegBackward0",
        "AddBackward0",
        "AddBackward1",
        "SubBackward0",
        "SubBackward1",
        "RsubBackward0",
        "RsubBackward1",
        "MulBackward0",
        "MulBackward1",
        "DivBackward0",
        "DivBackward1",
        "MaskedFillBackward0",
        "MaskedFillBackward1",
        "CloneBackward0",
        "ViewBackward0",
        "UnsafeViewBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "UnsqueezeBackward0",
        "ToCopyBackward0",
        "BackwardHookFunctionBackward",
        "FillBackward2",  # an empty batch: cross-entropy with probability targets fills NaN
    }
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
        name = node.name()
        if name in NLL_KERNELS:
            for child, _ in graph.edges[node]:
                if child is None or child in graph.leaves:
                    continue
                source = child
                while source.name() in RESHAPES:  # cross-entropy over extra dimensions
                    seen.add(source)
                    source = graph.edges[source][0][0]
                if source.name() != LOG_SOFTMAX:
                    raise HesScaleError(
                        f"HesScaleGN: the input of {name} does not come from a log_softmax "
                        f"(it comes from {source.name()}), so its Gauss-Newton diagonal would be "
                        "zero. Use F.log_softmax or F.cross_entropy, or name the network output "
                        "with hesscale.backward(loss, gn=True, output=...)."
                    )
                queue.append(source)  # the log-softmax: part of the loss
        elif name in LOSS_KERNELS or name == LOG_SOFTMAX:
            found.extend(child for child, _ in graph.edges[node] if child is not None)
        elif name in LOSS_COMBINERS:
            queue.extend(child for child, _ in graph.edges[node] if child is not None)
        else:
            raise HesScaleError(
                "HesScaleGN needs to know where the network ends and the loss begins, and the "
                f"loss reaches {name} ({graph.path_to(node)}) before any loss function it "
                f"recognises ({RECOGNISED_LOSSES}). Name the network output(s): "
                "hesscale.backward(loss, gn=True, output=logits)."
            )
    if not found:
        raise HesScaleError(
            f"HesScaleGN found no loss function in the graph ({RECOGNISED_LOSSES}). Name the "
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
