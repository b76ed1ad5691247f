"""Shared checks for the engine's tests: one rule against the definition, a whole graph against
the oracle, and the list of autograd nodes each test exercises (for the registry's coverage)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hesscale.engine.backward import node_diagonals
from hesscale.engine.graph import operation_names
from hesscale.internals import output_count
from tests.engine_oracle import op_definition
from tests.oracle import assert_close


def leaves(*tensors: Tensor, grad: tuple[bool, ...] | None = None) -> list[Tensor]:
    """Float64 leaf copies; ``grad[i]`` says whether input i requires grad (default: floats)."""
    result = []
    for i, t in enumerate(tensors):
        t = t.detach().clone()
        wants = t.is_floating_point() if grad is None else grad[i]
        result.append(t.requires_grad_(wants))
    return result


def check_op(
    fn: Callable[..., Tensor | tuple],
    *inputs: Tensor,
    grad: tuple[bool, ...] | None = None,
    node_name: str | None = None,
    seed: int = 0,
    definition: Callable[..., Tensor | tuple] | None = None,
) -> str:
    """``fn(*inputs)`` must be recorded as one autograd node on the leaves; for random h and g
    per output, both variants of its rule equal the definition for every input needing grad.
    ``definition``: the same function written with operations torch can differentiate twice
    exactly, for kernels whose double backward torch does not implement or approximates
    (default: ``fn``). Returns the node's name."""
    xs = leaves(*inputs, grad=grad)
    out = fn(*xs)
    outs = list(out) if isinstance(out, list | tuple) else [out]
    node = outs[0].grad_fn
    assert all(o.grad_fn is node for o in outs), "fn must record a single autograd node"
    if node_name is not None:
        assert node.name() == node_name, node.name()
    generator = torch.Generator().manual_seed(seed)
    h_outs = [torch.randn(o.shape, generator=generator, dtype=o.dtype) for o in outs]
    g_outs = [torch.randn(o.shape, generator=generator, dtype=o.dtype) for o in outs]
    unused = [None] * (output_count(node) - len(outs))  # outputs fn does not return
    for second_order in (True, False):
        got = node_diagonals(node, h_outs + unused, g_outs + unused, second_order=second_order)
        position = {id(x): j for j, x in enumerate(xs)}
        for (child, _), h in zip(node.next_functions, got, strict=True):
            if child is None:
                assert h is None
                continue
            j = position[id(child.variable)]
            expected = op_definition(
                definition or fn, xs, j, h_outs, g_outs if second_order else None
            )
            if h is None:  # None stands for a zero diagonal: the definition must be zero
                assert not expected.any(), f"{node.name()}: no diagonal for input {j}"
                continue
            assert h.shape == xs[j].shape
            assert_close(h, expected)
    return node.name()


def node_names(fn: Callable[[], Tensor]) -> set[str]:
    """The names of every node in the graph of ``fn()``."""
    return operation_names(fn())


def check_graph(
    loss_fn: Callable[..., tuple[Tensor, tuple[Tensor, ...]]],
    params: dict[str, Tensor],
    *inputs,
    name_output: bool = False,
    variants: tuple[str, ...] = ("hesscale", "hesscale_gn"),
    rtol: float = 1e-10,
) -> None:
    """``loss_fn(params, *inputs)`` returns (loss, network_outputs). hesscale.backward's
    diagonals (HesScaleGN: with the network output found by itself, or named when
    ``name_output``) and gradients equal the graph oracle's for every parameter (to ``rtol``;
    looser only for graphs that round through a lower precision)."""
    import hesscale
    from tests.engine_oracle import GraphOracle

    names = list(params)
    leaves_ = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    loss, outputs = loss_fn(leaves_, *inputs)
    gn = "both" if len(variants) == 2 else variants[0] == "hesscale_gn"
    hesscale.backward(loss, gn=gn, output=outputs if name_output else None)

    def fn(*tensors):
        loss, outputs = loss_fn(
            dict(zip(names, tensors[: len(names)], strict=True)), *tensors[len(names) :]
        )
        return (loss, *outputs)

    oracle = GraphOracle(fn, [params[n] for n in names] + [torch.as_tensor(i) for i in inputs])
    for variant in variants:
        expected, gradients = oracle.diagonals(gn=variant == "hesscale_gn")
        for name, h, grad in zip(names, expected, gradients, strict=False):  # inputs follow
            leaf = leaves_[name]
            atol = 1e-12 if rtol <= 1e-10 else 100 * rtol * float(grad.abs().max())
            torch.testing.assert_close(leaf.grad, grad, rtol=rtol, atol=atol)
            got = getattr(leaf, variant)
            assert got.shape == leaf.shape and got.dtype == leaf.dtype
            atol = 1e-12 if rtol <= 1e-10 else 100 * rtol * float(h.abs().max())
            torch.testing.assert_close(
                got, h, rtol=rtol, atol=atol, msg=lambda m, n=name, v=variant: f"{v} {n}: {m}"
            )
