"""``hesscale.compile``: the forward pass, the gradient and the diagonal in one compiled graph.

The engine runs on autograd's graph with a Python hook per node, which ``torch.compile`` cannot
see into. So instead the whole step, ``loss = fn(*args)`` followed by ``hesscale.backward`` (the
same engine, the same rules), is traced once into one graph of ATen operations on fake tensors
(internals.trace_aten, ``make_fx``), with the model's parameters and buffers as the graph's
inputs, and that graph is compiled with ``torch.compile`` (Inductor by default). Each call runs
the compiled graph on the current parameters and buffers, and writes the loss's gradient and
diagonal(s) into ``p.grad`` and ``p.hesscale`` / ``p.hesscale_gn``, accumulating exactly as
``hesscale.backward`` does. In-place updates of buffers (batch norm's running statistics) are
inputs the compiled graph writes to.

A traced graph holds for one configuration: the arguments' shapes, dtypes and devices (and the
values of non-tensor arguments), the parameters' shapes and ``requires_grad``, train / eval mode
of every module, autocast. Each new configuration (e.g. a smaller last batch) is traced and
compiled anew; earlier ones stay cached.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from hesscale import accumulation
from hesscale.engine import distributed
from hesscale.engine import graph as graphs
from hesscale.engine.backward import DiagonalBackward, store_diagonal, variants_of
from hesscale.errors import HesScaleError
from hesscale.internals import (
    compiled_module_types,
    inductor_step_options,
    inline_compiled_code,
    reparametrized,
    trace_aten,
)


def compile(  # noqa: A001  (hesscale.compile, as torch.compile)
    fn: Callable[..., Tensor],
    gn: bool | Literal["both"] = False,
    *,
    modules: Iterable[nn.Module] | None = None,
    backend: str = "inductor",
    **compile_options: Any,
) -> CompiledStep:
    """A compiled training step: ``loss = step(*args)`` computes ``fn(*args)`` (a scalar loss)
    and leaves ``p.grad`` and ``p.hesscale`` (``gn=True``: ``p.hesscale_gn``; ``'both'``: both)
    in every parameter the loss depends on, exactly as ``hesscale.backward(fn(*args), gn=gn)``
    would, accumulating the same way (over steps without ``zero_grad()``)::

        def fn(x, y):
            return F.cross_entropy(model(x), y)

        step = hesscale.compile(fn)
        for x, y in loader:
            opt.zero_grad()
            loss = step(x, y)
            opt.step()

    Args:
        fn: computes the scalar loss from ``args`` with the user's model(s); the model may be
            wrapped with ``torch.compile`` already.
        gn: as for ``hesscale.backward``.
        modules: the modules whose parameters and buffers ``fn`` uses; by default those ``fn``
            refers to (closure, globals, defaults, ``self`` of a method).
        backend: passed to ``torch.compile`` for the traced graph.
        compile_options: passed to ``torch.compile`` for the traced graph. With Inductor,
            ``options`` defaults to ``{"reorder_for_locality": False}`` (see
            ``hesscale.internals.inductor_step_options``); options you give take precedence.

    Returns:
        A callable: ``step(*args)`` returns the loss and fills ``p.grad`` and the diagonals.

    Raises:
        HesScaleError: where ``fn`` cannot be compiled this way (named in the message).
    """
    found = _find_modules(fn) if modules is None else list(modules)
    if not found:
        raise HesScaleError(
            "hesscale.compile found no nn.Module that fn refers to (in its closure, globals, "
            "defaults or self), so it cannot tell which parameters fn uses. Name them: "
            "hesscale.compile(fn, modules=[model])."
        )
    return CompiledStep(fn, variants_of(gn), _outermost(found), backend, compile_options)


class CompiledStep:
    """What ``hesscale.compile`` returns; call it as ``fn``. ``traces`` counts the graphs traced
    and compiled so far (one per configuration of the arguments and the model)."""

    def __init__(self, fn, variants, modules, backend, compile_options) -> None:
        self.fn, self.variants, self.modules = fn, variants, modules
        self.backend, self.compile_options = backend, compile_options
        self._graphs: dict[tuple, _Traced] = {}

    @property
    def traces(self) -> int:
        return len(self._graphs)

    def __call__(self, *args: Any) -> Tensor:
        if distributed.active():
            raise HesScaleError(
                "hesscale.compile does not run in a distributed job: its compiled step neither "
                "synchronises gradients as DistributedDataParallel does nor averages the "
                "diagonals over ranks. Use hesscale.backward there."
            )
        state = _State(self.modules)
        flat_args, spec = pytree.tree_flatten(args)
        key = (spec, tuple(_describe(a, i) for i, a in enumerate(flat_args)), *state.describe())
        traced = self._graphs.get(key)
        if traced is None:
            traced = self._graphs[key] = self._trace(state, flat_args, spec)
        with torch.no_grad():
            loss, grads, diagonals = traced.run(state, flat_args)
        trainable = state.trainable()
        accumulates = [[accumulation.continues(p, v) for p in trainable] for v in self.variants]
        for p, grad in zip(trainable, grads, strict=True):
            if grad is None:
                continue
            if p.grad is None:
                p.grad = grad
            else:
                p.grad.add_(grad)
        for v, variant in enumerate(self.variants):
            for p, grad, h, accumulate in zip(
                trainable, grads, diagonals[v], accumulates[v], strict=True
            ):
                if grad is not None:
                    store_diagonal(p, variant, h, accumulate)
        return loss

    def _trace(self, state: _State, flat_args: list, spec) -> _Traced:
        variants, fn, modules = self.variants, self.fn, self.modules
        n_params, n_buffers = len(state.params), len(state.buffers)
        trainable_mask = [p.requires_grad for p in state.params]

        def step(*inputs):  # flat in, flat out: (loss, grads, diagonals per variant)
            params = list(inputs[:n_params])
            buffers = list(inputs[n_params : n_params + n_buffers])
            args = pytree.tree_unflatten(list(inputs[n_params + n_buffers :]), spec)
            with contextlib.ExitStack() as stack:
                for module, named in zip(modules, state.assign(params, buffers), strict=True):
                    stack.enter_context(reparametrized(module, named))
                loss = fn(*args)
                if not isinstance(loss, Tensor) or loss.grad_fn is None:
                    DiagonalBackward(loss, variants)  # raises the engine's error
                _check_leaves(loss, params)
                trainable = [p for p, t in zip(params, trainable_mask, strict=True) if t]
                DiagonalBackward(loss, variants).run(
                    trainable, None, across_ranks=False, traced=True
                )
            grads = [p.grad for p in trainable]
            diagonals = [getattr(p, v, None) for v in variants for p in trainable]
            return (loss.detach(), *grads, *diagonals)

        # fresh tensors (sharing memory) without the parameters' .grad or diagonals
        params = [p.detach().requires_grad_(p.requires_grad) for p in state.params]
        inputs = [*params, *(b.detach() for b in state.buffers), *flat_args]
        with inline_compiled_code():  # a torch.compile'd model inside fn: trace its code
            graph, constants = trace_aten(step, *inputs)
        options = _with_step_options(self.backend, self.compile_options)
        compiled = torch.compile(
            graph, backend=self.backend, fullgraph=True, dynamic=False, **options
        )
        return _Traced(compiled, constants, sum(trainable_mask), len(variants))


class _Traced:
    def __init__(self, compiled, constants, n_trainable: int, n_variants: int) -> None:
        self.compiled, self.constants = compiled, constants
        self.n_trainable, self.n_variants = n_trainable, n_variants

    def run(self, state: _State, flat_args: list):
        """(loss, gradients, diagonals[variant]) of the trainable parameters, None where the
        loss does not reach one."""
        params = [p.detach() for p in state.params]
        args = [a.detach() if isinstance(a, Tensor) else a for a in flat_args]
        constants = [c.detach() for c in self.constants]
        out = self.compiled(*params, *state.buffers, *args, *constants)
        n = self.n_trainable
        grads = list(out[1 : 1 + n])
        diagonals = [list(out[1 + n * (v + 1) : 1 + n * (v + 2)]) for v in range(self.n_variants)]
        return out[0], grads, diagonals


class _State:
    """The parameters and buffers of ``modules`` (each tensor once), as the traced graph's
    inputs."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.names: list[tuple[list[str], list[str]]] = []
        self.params: list[Tensor] = []
        self.buffers: list[Tensor] = []
        seen: set[int] = set()
        for module in modules:
            param_names, buffer_names = [], []
            for name, p in module.named_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    param_names.append(name)
                    self.params.append(p)
            for name, b in module.named_buffers():
                if id(b) not in seen:
                    seen.add(id(b))
                    buffer_names.append(name)
                    self.buffers.append(b)
            self.names.append((param_names, buffer_names))

    def assign(self, params: list[Tensor], buffers: list[Tensor]) -> list[dict[str, Tensor]]:
        """{name: tensor} per module for the graph's inputs ``params`` and ``buffers``."""
        out, i, j = [], 0, 0
        for param_names, buffer_names in self.names:
            named = dict(zip(param_names, params[i : i + len(param_names)], strict=True))
            named.update(zip(buffer_names, buffers[j : j + len(buffer_names)], strict=True))
            i, j = i + len(param_names), j + len(buffer_names)
            out.append(named)
        return out

    def trainable(self) -> list[Tensor]:
        return [p for p in self.params if p.requires_grad]

    def describe(self) -> tuple:
        tensors = tuple(
            (tuple(t.shape), t.dtype, t.device, t.requires_grad) for t in self.params + self.buffers
        )
        modes = tuple(m.training for module in self.modules for m in module.modules())
        autocast = tuple(
            (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda")
        )
        return tensors, modes, autocast, torch.is_grad_enabled()


def _with_step_options(backend: str, compile_options: dict[str, Any]) -> dict[str, Any]:
    """The user's arguments for torch.compile, with Inductor's options for a traced step
    (internals.inductor_step_options) as defaults beneath the user's ``options``; unchanged for
    another backend or with ``mode`` (which torch.compile does not take beside ``options``)."""
    defaults = inductor_step_options() if backend == "inductor" else {}
    if not defaults or "mode" in compile_options:
        return compile_options
    return {**compile_options, "options": {**defaults, **(compile_options.get("options") or {})}}


def _describe(value: Any, i: int) -> tuple:
    if isinstance(value, Tensor):
        if value.requires_grad:
            raise HesScaleError(
                f"hesscale.compile: argument tensor {i} (flattened) requires grad; a compiled "
                "step computes the results of the modules' parameters only. Pass it detached, "
                "or make it a parameter of the model."
            )
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    try:
        hash(value)
    except TypeError:
        raise HesScaleError(
            f"hesscale.compile: argument {i} (flattened) is a {type(value).__name__}, which "
            "can neither be a graph input nor a constant of the traced graph; pass tensors, "
            "numbers, strings, or lists / tuples / dicts of them."
        ) from None
    return ("value", type(value), value)


def _check_leaves(loss: Tensor, params: list[Tensor]) -> None:
    """Refuse a loss that depends on a tensor requiring grad that is not one of the modules'
    parameters (its result would go nowhere)."""
    ours = {id(p) for p in params}
    for leaf in graphs.Graph(loss.grad_fn).leaves.values():
        if id(leaf) not in ours:
            raise HesScaleError(
                "hesscale.compile: the loss depends on a tensor of shape "
                f"{tuple(leaf.shape)} that requires grad and is not a parameter of the modules "
                "fn refers to. Make it a parameter of the model, or name every module that "
                "holds parameters: hesscale.compile(fn, modules=[...])."
            )


def _find_modules(fn: Callable) -> list[nn.Module]:
    """The nn.Modules ``fn`` refers to: itself, its ``self``, its closure, its defaults and the
    globals its code names."""
    candidates: list[Any] = [fn, getattr(fn, "__self__", None)]
    code = getattr(fn, "__code__", None)
    candidates += [cell.cell_contents for cell in getattr(fn, "__closure__", None) or ()
                   if _filled(cell)]  # fmt: skip
    candidates += list(getattr(fn, "__defaults__", None) or ())
    if code is not None:
        namespace = getattr(fn, "__globals__", {})
        candidates += [namespace[name] for name in code.co_names if name in namespace]
    found = []
    for c in candidates:
        if isinstance(c, compiled_module_types()):
            c = c._orig_mod
        if isinstance(c, nn.Module) and all(c is not m for m in found):
            found.append(c)
    return found


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _outermost(modules: list[nn.Module]) -> list[nn.Module]:
    """The modules that are not submodules of another one in the list."""
    inner = {id(sub) for m in modules for sub in m.modules() if sub is not m}
    return [m for m in modules if id(m) not in inner]
