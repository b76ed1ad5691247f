"""``hesscale.backward``: autograd's backward pass, with the diagonals computed beside it.

Autograd runs the backward pass as usual (so ``p.grad``, hooks, DDP and ``inputs=`` behave
exactly as for ``loss.backward()``). A hook on every node of the recorded graph runs after the
node, when autograd has summed the gradient w.r.t. each of its outputs (``g``); by then every
consumer of those outputs has run too, so their diagonals (``h``) are complete as well. The
node's rule maps (h, g) to one diagonal per input, which the hook adds to what that input's
producer receives. Diagonals live exactly as long as the gradients do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from typing import Literal

import torch
import torch.utils.checkpoint
from torch import Tensor

from hesscale import accumulation
from hesscale.engine import distributed
from hesscale.engine import graph as graphs
from hesscale.engine.call import NodeCall
from hesscale.engine.hooks import GradientWatch
from hesscale.engine.registry import RULES
from hesscale.errors import HesScaleError
from hesscale.hook_warning import hook_warning_hidden
from hesscale.internals import apply_backward

Node = torch.autograd.graph.Node
Variant = Literal["hesscale", "hesscale_gn"]

# autograd's own backward, as torch defines it (``enable`` may replace the module attribute).
autograd_backward = torch.autograd.backward


def variants_of(gn: bool | str) -> tuple[Variant, ...]:
    """gn=False: HesScale; gn=True: HesScaleGN; gn='both': both in one pass."""
    if gn is False:
        return ("hesscale",)
    if gn is True:
        return ("hesscale_gn",)
    if gn == "both":
        return ("hesscale", "hesscale_gn")
    raise ValueError(f"gn={gn!r}: use False (HesScale), True (HesScaleGN) or 'both'.")


class DiagonalBackward:
    """One diagonal backward pass over the graph of ``loss`` (see ``hesscale.backward``)."""

    def __init__(
        self,
        loss: Tensor,
        variants: Sequence[Variant],
        output: Tensor | Iterable[Tensor] | None = None,
    ) -> None:
        _check_loss(loss)
        self.loss = loss
        self.variants = tuple(variants)
        self.graph = graphs.Graph(loss.grad_fn)
        self.network = self._network(output) if "hesscale_gn" in self.variants else set()
        # per variant: (node, output index) -> the diagonal that node's output has received
        self.pending: list[dict[tuple[Node, int], Tensor | None]] = [{} for _ in self.variants]
        # per variant: leaf tensor id -> (leaf, its diagonal so far)
        self.leaf_diagonals: list[dict[int, tuple[Tensor, Tensor | None]]] = [
            {} for _ in self.variants
        ]

    def _network(self, output: Tensor | Iterable[Tensor] | None) -> set[Node]:
        if output is None:
            starts = graphs.detect_network_outputs(self.graph)
        else:
            starts = graphs.output_edges(output)
            missing = [n for n in starts if n not in self.graph.edges]
            if missing:
                raise HesScaleError(
                    "output= names a tensor the loss does not depend on (its "
                    f"{missing[0].name()} is not in the loss's graph)."
                )
        return graphs.below(self.graph, starts)

    def run(
        self,
        inputs: Sequence[Tensor] | None,
        retain_graph: bool | None,
        gradient: Tensor | None = None,
        *,
        across_ranks: bool = True,
        traced: bool = False,
    ) -> None:
        """Run the pass; ``across_ranks=False`` skips the average over a distributed job's
        ranks (for the engine's own inner passes, hesscale.engine.decomposed); ``traced``: the
        pass runs on fake tensors (hesscale.compile), so the end-of-pass check of summed
        gradients, which reads values, is left out (the per-node checks still run)."""
        # non-leaf tensors named in inputs=: they get the diagonal their producer receives
        self.captured = {(t.grad_fn, t.output_nr): t for t in inputs or () if t.grad_fn is not None}
        targets = [*self.graph.leaves.values(), *self.captured.values()]
        self.accumulates = [
            {id(t) for t in targets if accumulation.continues(t, variant)}
            for variant in self.variants
        ]
        averaging = None
        if across_ranks and distributed.active():  # decided before autograd changes gradients
            averaging = distributed.Averaging(distributed.modules_of(self.graph), self.variants)
        # reshuffles run in their consumers' hooks; not with inputs=, where autograd may skip
        # a reshuffle whose input needs no gradient for these inputs
        self.reshuffles = self.graph.reshuffles if inputs is None else {}
        self.watch = GradientWatch()
        handles = [
            node.register_hook(self._hook_for(node))
            for node in self.graph.edges
            if node not in self.reshuffles
        ]
        hooks_warn = hook_warning_hidden() if self.graph.has_module_hooks else nullcontext()
        try:
            with hooks_warn:  # an extended (BackPACK) model: torch's first-layer hook warning
                autograd_backward(self.loss, gradient, retain_graph, inputs=inputs)
        finally:
            for handle in handles:
                handle.remove()
        if not traced:
            self.watch.check_sums()
        for v, pending in enumerate(self.pending):  # inputs= whose producer did not run
            for key, t in self.captured.items():
                if id(t) not in self.leaf_diagonals[v]:
                    self._add_to_leaf(v, t, pending.pop(key, None))
        self._write_leaves()
        if averaging is not None:
            averaging.apply(self._reached)

    def _reached(self, leaf: Tensor, variant: str) -> bool:
        """Whether this pass wrote ``leaf.<variant>``."""
        return id(leaf) in self.leaf_diagonals[self.variants.index(variant)]

    # the per-node step ---------------------------------------------------------------------

    def _hook_for(self, node: Node):
        rule = self.graph.rules[node]
        edges = self.graph.edges[node]
        leaves, reshuffles, watch = self.graph.leaves, self.reshuffles, self.watch
        captured = self.captured
        variants = [
            (pending, variant == "hesscale" or node not in self.network, v)
            for v, (variant, pending) in enumerate(zip(self.variants, self.pending, strict=True))
        ]

        def hook(grad_inputs: tuple, grad_outputs: tuple) -> None:
            watch.arrive(node, grad_inputs, grad_outputs)
            for (child, nr), grad in zip(edges, grad_inputs, strict=True):
                if grad is None or child is None or child in leaves:
                    continue
                if child in reshuffles:
                    while child in reshuffles and child is not None:
                        child, nr = reshuffles[child]
                    watch.send_unchecked((child, nr))
                else:
                    watch.send((child, nr), grad)
            n_out = len(grad_outputs)
            for pending, second_order, v in variants:
                if n_out == 1:
                    h_out = (pending.pop((node, 0), None),)
                else:
                    h_out = tuple(pending.pop((node, j), None) for j in range(n_out))
                for j, h in enumerate(h_out) if captured else ():
                    if (node, j) in captured and grad_outputs[j] is not None:
                        self._add_to_leaf(v, captured[(node, j)], h)
                h_in = _apply(rule, node, h_out, grad_outputs, grad_inputs, second_order)
                for (child, nr), h, grad in zip(edges, h_in, grad_inputs, strict=True):
                    if grad is None or child is None:
                        continue
                    while child in reshuffles:  # views etc.: h_x = J^T h_z right away
                        if h is not None:
                            h = apply_backward(child, h)[0]
                        child, nr = reshuffles[child]
                        if child is None:
                            break
                    if child is None:
                        continue
                    if child in leaves:
                        self._add_to_leaf(v, leaves[child], h)
                    elif h is not None:
                        key = (child, nr)
                        previous = pending.get(key)
                        pending[key] = h if previous is None else previous + h

        return hook

    def _add_to_leaf(self, v: int, leaf: Tensor, h: Tensor | None) -> None:
        store = self.leaf_diagonals[v]
        previous = store.get(id(leaf))
        store[id(leaf)] = (leaf, _add(None if previous is None else previous[1], h))

    # results -------------------------------------------------------------------------------

    def _write_leaves(self) -> None:
        """Set ``leaf.<variant>``, summed into the previous value exactly when the gradient
        sums into the previous ``leaf.grad`` (see ``hesscale.accumulation``)."""
        for v, variant in enumerate(self.variants):
            for key, (leaf, h) in self.leaf_diagonals[v].items():
                store_diagonal(leaf, variant, h, key in self.accumulates[v])


def store_diagonal(leaf: Tensor, variant: str, h: Tensor | None, accumulate: bool) -> None:
    """Set ``leaf.<variant>`` to ``h`` (None: zeros), added to the previous value when
    ``accumulate`` (``hesscale.accumulation.continues``, decided before the gradient changed),
    and note the gradient it belongs to."""
    h = torch.zeros_like(leaf) if h is None else h.to(leaf.dtype)
    if accumulate:
        h = getattr(leaf, variant) + h
    setattr(leaf, variant, h)
    accumulation.record(leaf, variant, h)


def _apply(rule, node, h_out, grad_outputs, grad_inputs, second_order: bool) -> list:
    """Run ``rule`` on one node: one diagonal per input, in the input's shape (None: zero, or
    no diagonal needed). Grad mode is off, as it is in autograd's backward pass (without
    create_graph), where the hooks run."""
    call = NodeCall(node, h_out, grad_outputs, grad_inputs, second_order)
    try:
        h_in = rule(call)
    except torch.utils.checkpoint.CheckpointError as error:
        raise HesScaleError(
            f"{node.name()} saved its tensors under activation checkpointing "
            "(torch.utils.checkpoint), which lets each be read only once, by autograd; HesScale "
            "needs them too. Run that part of the model without checkpointing."
        ) from error
    results = list(h_in)
    for i, (h, grad) in enumerate(zip(results, grad_inputs, strict=True)):
        if h is None:
            continue
        if grad is None:
            results[i] = None
        elif h.shape != grad.shape:
            results[i] = h.sum_to_size(grad.shape)  # a broadcast input sums its copies
    return results


def node_diagonals(
    node: Node,
    h_out: Sequence[Tensor | None],
    g_out: Sequence[Tensor | None],
    second_order: bool = True,
) -> list[Tensor | None]:
    """The diagonal each input of one recorded node receives, given the diagonal ``h_out`` and
    the gradient ``g_out`` w.r.t. each of its outputs (None: zero). For testing a rule, or
    writing one: the node's own gradients come from its backward formula."""
    from hesscale.internals import output_shape

    entry = RULES.get(node.name())
    if entry is None:
        raise HesScaleError(f"No HesScale rule for the autograd node {node.name()}.")
    with torch.no_grad():
        grad_inputs = [  # as autograd's engine passes them: summed to each input's shape
            None if grad is None or child is None else grad.sum_to_size(output_shape(child, nr))
            for grad, (child, nr) in zip(
                apply_backward(node, *g_out), node.next_functions, strict=True
            )
        ]
        return _apply(entry.rule, node, tuple(h_out), tuple(g_out), grad_inputs, second_order)


def _add(previous: Tensor | None, h: Tensor | None) -> Tensor | None:
    if previous is None:
        return h
    if h is None:
        return previous
    return previous + h


def _check_loss(loss: object) -> None:
    if not isinstance(loss, Tensor):
        raise TypeError(f"hesscale.backward(loss): loss must be a tensor, not {type(loss)}.")
    if loss.numel() != 1:
        raise HesScaleError(
            f"hesscale.backward(loss): loss must be a scalar (one element), got shape "
            f"{tuple(loss.shape)}; reduce it (e.g. .mean() or .sum()) first."
        )
    if loss.grad_fn is None:
        raise HesScaleError(
            "hesscale.backward(loss): loss has no grad_fn: it was not computed from tensors "
            "that require grad (or under torch.no_grad())."
        )


def backward(
    loss: Tensor,
    gn: bool | Literal["both"] = False,
    *,
    output: Tensor | Iterable[Tensor] | None = None,
    inputs: Sequence[Tensor] | None = None,
    retain_graph: bool | None = None,
) -> None:
    """``loss.backward()`` that also leaves the HesScale diagonal in every leaf it reaches.

    Afterwards each parameter (each leaf that requires grad) the loss depends on holds
    ``p.grad``, exactly as after ``loss.backward()``, and ``p.hesscale`` (``gn=True``:
    ``p.hesscale_gn``; ``gn='both'``: both), same shape and dtype as ``p``. Like the gradient,
    the diagonal accumulates over several backward passes (gradient accumulation) and starts
    afresh after ``zero_grad()``.

    For every operation z = f(x_1, ..., x_m) of the recorded graph, with h the diagonal and g
    the gradient w.r.t. z, each input x_i receives
    diag(J_i^T diag(h) J_i) + sum_k g_k diag(d^2 z_k / d x_i^2); a tensor used several times
    sums what it receives, and the loss starts with h = 0, g = 1. HesScaleGN drops the second
    term in the network, i.e. below its output: the inputs of the loss functions at the top of
    the graph (cross-entropy, NLL, MSE, BCE, ...), or the tensors named by ``output``.

    Args:
        loss: a scalar tensor with a graph.
        gn: False for HesScale, True for HesScaleGN, 'both' for both in one pass.
        output: the network output(s) for HesScaleGN, when the loss is not built from one of
            the loss functions it recognises (e.g. a hand-written Gaussian log-likelihood).
        inputs: as for ``loss.backward(inputs=...)``: only these leaves get results.
        retain_graph: as for ``loss.backward()``.

    Returns:
        None; the results are left in the leaves, as ``loss.backward()`` leaves ``p.grad``.

    Raises:
        TypeError: when ``loss`` is not a tensor.
        ValueError: for a ``gn`` other than False, True or 'both'.
        HesScaleError: when ``loss`` is not a scalar with a graph, when HesScaleGN cannot tell
            where the network ends (name it with ``output=``), or when a rule cannot run.
        UnsupportedOperationError: when the graph holds an operation without a rule (or in a
            configuration its rule does not cover), before anything is computed.
    """
    DiagonalBackward(loss, variants_of(gn), output).run(inputs, retain_graph)
