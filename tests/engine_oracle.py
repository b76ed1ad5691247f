"""The engine's oracle: the HesScale definition evaluated operation by operation on a graph,
by brute force, independently of hesscale.

The forward pass is traced to ATen operations with torch.fx (``make_fx``; fused attention and
recurrent kernels replaced by torch's own decompositions into primitive operations). Then, from
the loss (h = 0, g = 1) down to the inputs, every operation z = f(x_1, ..., x_m) sends each
input that depends on a differentiated tensor

    diag(J_i^T diag(h) J_i) + sum_k g_k diag(d^2 z_k / d x_i^2)      and      J_i^T g,

with J_i and the Hessians computed densely by torch.autograd.functional on that one operation
(float64, tiny shapes); a value used several times sums what it receives. HesScaleGN drops the
second term at every operation the network outputs depend on.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import Tensor
from torch._decomp import get_decompositions
from torch.autograd.functional import hessian, jacobian
from torch.func import functionalize
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten

# Fused kernels whose rules are defined as their decomposition into primitive operations.
FUSED_DECOMPOSITIONS = get_decompositions(
    [
        aten._scaled_dot_product_flash_attention_for_cpu,
        aten.lstm.input,
        aten.lstm.data,
        aten.gru.input,
        aten.gru.data,
        aten.rnn_tanh.input,
        aten.rnn_tanh.data,
        aten.rnn_relu.input,
        aten.rnn_relu.data,
    ]
)
STOPS_GRADIENT = {aten.detach.default}


def _copy(self: Tensor, src: Tensor, non_blocking: bool = False) -> Tensor:
    """aten.copy (functionalize's form of ``self.copy_(src)``, e.g. from x[...] = y): src in
    self's shape and dtype; torch has no derivative w.r.t. self, which it does not depend on."""
    return src.to(self.dtype).expand(self.shape).clone()


# Kernels make_fx records when no input requires grad, and their differentiable twins.
DIFFERENTIABLE_TWINS = {
    aten._embedding_bag_forward_only.default: aten._embedding_bag.default,
    aten.copy.default: _copy,
}


def _out_of_place(target):
    """aten.add_.Tensor -> aten.add.Tensor: the oracle evaluates values, not mutations (and
    a kernel without a derivative becomes its differentiable twin)."""
    if target in DIFFERENTIABLE_TWINS:
        return DIFFERENTIABLE_TWINS[target]
    if isinstance(target, torch._ops.OpOverload) and target._schema.name.endswith("_"):
        packet = getattr(aten, target._schema.name.split("::")[1][:-1])
        if target._overloadname in packet.overloads():
            return getattr(packet, target._overloadname)
        # e.g. aten.transpose_.default -> aten.transpose.int: the overload with the same arguments
        arguments = [a.type for a in target._schema.arguments]
        for name in packet.overloads():
            overload = getattr(packet, name)
            if [a.type for a in overload._schema.arguments] == arguments:
                return overload
    return target


def _map_tensors(args, fn):
    if isinstance(args, list | tuple):
        return type(args)(_map_tensors(a, fn) for a in args)
    if isinstance(args, dict):
        return {k: _map_tensors(v, fn) for k, v in args.items()}
    return fn(args)


def _fx_nodes(args) -> list:
    found = []
    _map_tensors(args, lambda a: found.append(a) if isinstance(a, torch.fx.Node) else None)
    return found


class GraphOracle:
    """``fn(*tensors)`` returns the scalar loss, or (loss, *network_outputs) for HesScaleGN."""

    def __init__(self, fn: Callable, tensors: list[Tensor]) -> None:
        self.tensors = [t.detach() for t in tensors]
        self.module = make_fx(functionalize(fn), decomposition_table=FUSED_DECOMPOSITIONS)(
            *self.tensors
        )
        self.nodes = list(self.module.graph.nodes)
        self.values: dict = {}
        placeholders = iter(self.tensors)
        for node in self.nodes:
            if node.op == "placeholder":
                self.values[node] = next(placeholders)
            elif node.op == "get_attr":
                self.values[node] = getattr(self.module, node.target)
            elif node.op == "call_function":
                args, kwargs = self._concrete(node.args), self._concrete(node.kwargs)
                self.values[node] = _out_of_place(node.target)(*args, **kwargs)
            elif node.op == "output":
                self.outputs = list(node.args[0])

    def _concrete(self, args):
        return _map_tensors(args, lambda a: self.values[a] if isinstance(a, torch.fx.Node) else a)

    def _differentiable(self, wrt: set) -> set:
        """Nodes whose floating-point value depends on the placeholders in ``wrt``."""
        found = set(wrt)
        for node in self.nodes:
            if node.op != "call_function" or node.target in STOPS_GRADIENT:
                continue
            value = self.values[node]
            floating = any(
                isinstance(v, Tensor) and v.is_floating_point()
                for v in (value if isinstance(value, list | tuple) else [value])
            )
            if floating and any(a in found for a in _fx_nodes((node.args, node.kwargs))):
                found.add(node)
        return found

    def _ancestors(self, nodes) -> set:
        found, stack = set(), list(nodes)
        while stack:
            node = stack.pop()
            if node not in found:
                found.add(node)
                stack.extend(_fx_nodes((node.args, node.kwargs)))
        return found

    def diagonals(self, gn: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """(diagonal, gradient) for every input tensor, in the order given."""
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        floating = {
            p for p, v in zip(placeholders, self.tensors, strict=True) if v.is_floating_point()
        }
        differentiable = self._differentiable(floating)
        network = self._ancestors(self.outputs[1:]) if gn else set()
        if gn and len(self.outputs) < 2:
            raise ValueError("HesScaleGN needs fn to return (loss, *network_outputs)")
        loss = self.outputs[0]
        h: dict = {loss: torch.zeros_like(self.values[loss])}
        g: dict = {loss: torch.ones_like(self.values[loss])}
        for node in reversed(self.nodes):
            if node.op != "call_function" or node not in differentiable or node not in g:
                continue
            if node.target is operator.getitem:
                parent, index = node.args
                slots_h = h.setdefault(parent, {})
                slots_g = g.setdefault(parent, {})
                slots_h[index], slots_g[index] = h[node], g[node]
                continue
            self._backward_through(node, h, g, differentiable, node not in network)
        return (
            [
                h.get(p, torch.zeros_like(v))
                for p, v in zip(placeholders, self.tensors, strict=True)
            ],
            [
                g.get(p, torch.zeros_like(v))
                for p, v in zip(placeholders, self.tensors, strict=True)
            ],
        )

    def _backward_through(self, node, h, g, differentiable, second_order: bool) -> None:
        value = self.values[node]
        outputs = list(value) if isinstance(value, list | tuple) else [value]
        if isinstance(value, list | tuple):
            slots = range(len(outputs))
            h_slots, g_slots = h.get(node, {}), g.get(node, {})
        else:
            slots, h_slots, g_slots = [0], {0: h[node]}, {0: g[node]}
        used = [i for i in slots if i in g_slots]
        h_flat = torch.cat([h_slots[i].reshape(-1).double() for i in used])
        g_flat = torch.cat([g_slots[i].reshape(-1).double() for i in used])
        target = _out_of_place(node.target)
        positions = []  # (path into args, fx node) for every differentiable tensor argument

        def collect(args, path):
            if isinstance(args, list | tuple):
                for i, a in enumerate(args):
                    collect(a, (*path, i))
            elif isinstance(args, torch.fx.Node) and args in differentiable:
                positions.append((path, args))

        collect(list(node.args), ())
        base_args = self._concrete(list(node.args))
        kwargs = self._concrete(node.kwargs)
        for path, arg in positions:

            def local(x, path=path):
                args = _replace(base_args, path, x)
                out = target(*args, **kwargs)
                outs = list(out) if isinstance(out, list | tuple) else [out]
                return torch.cat([outs[i].reshape(-1).double() for i in used])

            x = self.values[arg].detach()
            jac = jacobian(local, x).reshape(h_flat.numel(), x.numel()).double()
            h_in = (jac.square() * h_flat.unsqueeze(1)).sum(0)
            if second_order:
                hess = hessian(lambda u, local=local: (g_flat * local(u)).sum(), x)
                h_in = h_in + hess.reshape(x.numel(), x.numel()).diagonal().double()
            g_in = jac.T @ g_flat
            h[arg] = h.get(arg, 0) + h_in.reshape(x.shape)  # kept in float64
            g[arg] = g.get(arg, 0) + g_in.reshape(x.shape)


def _replace(args, path, x):
    if not path:
        return x
    args = list(args)
    args[path[0]] = _replace(args[path[0]], path[1:], x)
    return args


def module_oracle(
    model: torch.nn.Module,
    loss_of: Callable[..., Tensor | tuple],
    *inputs,
    gn: bool = False,
) -> dict[str, tuple[Tensor, Tensor]]:
    """{parameter name: (diagonal, gradient)} for ``loss_of(model_output_fn, *inputs)``.

    ``loss_of(forward, *inputs)`` computes the loss (or (loss, *network_outputs) for gn) with
    ``forward(x)`` calling the model.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    buffers = dict(model.named_buffers())
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}

    def fn(*tensors):
        values = dict(zip(names, tensors[: len(names)], strict=True))

        def forward(*args):
            return torch.func.functional_call(model, {**values, **fixed, **buffers}, args)

        return loss_of(forward, *tensors[len(names) :])

    oracle = GraphOracle(fn, params + [torch.as_tensor(i) for i in inputs])
    diagonals, gradients = oracle.diagonals(gn=gn)
    return {n: (d, gr) for n, d, gr in zip(names, diagonals, gradients, strict=False)}


def op_definition(
    fn: Callable[..., Tensor | tuple],
    inputs: list[Tensor],
    i: int,
    h_outs: list[Tensor],
    g_outs: list[Tensor] | None,
) -> Tensor:
    """The definition for input i of one operation with (possibly) several outputs:
    diag(J_i^T diag(h) J_i) + sum_k g_k diag(d^2 z_k / d x_i^2), outputs concatenated."""

    def local(x):
        args = [x if j == i else t.detach() for j, t in enumerate(inputs)]
        out = fn(*args)
        outs = list(out) if isinstance(out, list | tuple) else [out]
        return torch.cat([o.reshape(-1) for o in outs])

    x = inputs[i].detach()
    h_flat = torch.cat([h.reshape(-1) for h in h_outs])
    jac = jacobian(local, x).reshape(h_flat.numel(), x.numel())
    h_in = (jac.square() * h_flat.unsqueeze(1)).sum(0)
    if g_outs is not None:
        g_flat = torch.cat([g.reshape(-1) for g in g_outs])
        hess = hessian(lambda u: (g_flat * local(u)).sum(), x)
        h_in = h_in + hess.reshape(x.numel(), x.numel()).diagonal()
    return h_in.reshape(x.shape)
