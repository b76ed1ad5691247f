"""HesScale and HesScaleGN as BackPACK extensions: dispatch and per-pass bookkeeping."""

from __future__ import annotations

import torch
from backpack.extensions.backprop_extension import FAIL_ERROR, BackpropExtension
from backpack.extensions.module_extension import ModuleExtension
from torch import Tensor, nn

from hesscale.accumulation import continues, record
from hesscale.extensions.base import HesScaleError, UnsupportedModuleError, describe
from hesscale.extensions.registry import ADAPTORS
from hesscale.hook_warning import HookWarningSilenced
from hesscale.internals import (
    BACKWARD_HOOK_NODE,
    ORDER_PRESERVING_NODES,
    Node,
    accumulated_variable,
    clear_saved_quantities,
    current_graph_task_id,
    queue_engine_callback,
    will_engine_execute,
)
from hesscale.rules.precision import cast_like


def _graph_parameters(root: Tensor) -> tuple[list[nn.Parameter], bool]:
    """Parameters requiring grad that the backward pass from ``root`` will reach, and whether
    the pass skips a module hook (``backward(inputs=...)``, ``torch.autograd.grad``)."""
    found: dict[int, nn.Parameter] = {}
    seen: set = set()
    skips_a_hook = False
    stack = [root.grad_fn]
    while stack:  # runs once per backward pass
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = accumulated_variable(node)
        if variable is not None:  # AccumulateGrad: a leaf, no further nodes
            if isinstance(variable, nn.Parameter) and variable.requires_grad:
                found[id(variable)] = variable
            continue
        if node.name() == BACKWARD_HOOK_NODE and not will_engine_execute(node):
            skips_a_hook = True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(found.values()), skips_a_hook


class DiagonalBackprop(BackpropExtension):
    """Backpropagates a diagonal Hessian approximation from the loss through the network.

    After ``with backpack(ext): loss.backward()`` every parameter that requires grad holds
    ``param.<savefield>``, same shape and dtype as the parameter. Each module type maps to an
    adaptor (``hesscale.extensions.ModuleAdaptor``); ``set_module_extension`` adds or replaces
    one for this extension instance, e.g. for a user-defined layer.
    """

    second_order: bool = True

    def __init__(self, savefield: str) -> None:
        super().__init__(savefield=savefield, module_exts={}, fail_mode=FAIL_ERROR)
        self._own_adaptors: dict[type[nn.Module], ModuleExtension] = {}  # set_module_extension
        self._hook_warning = HookWarningSilenced()
        self._backward_pass: int | None = None  # autograd's id of the pass being served
        self._expected: list[nn.Parameter] = []  # parameters that must receive a diagonal
        self._loss_gradients: list[tuple[nn.Module, Tensor]] = []  # checked at the end
        self._served: set[int] = set()  # id() of the modules this pass has served
        self._layouts: dict[int, tuple[torch.Size, tuple[int, ...]]] = {}
        self._producers: dict[int, Node | None] = {}  # the graph node behind each quantity
        self._log_prob_gradients: dict[int, Tensor] = {}  # NLLLoss's gradient, by input
        self._decided: set[int] = set()  # parameters whose accumulation this pass has decided
        self._reached: set[int] = set()  # parameters this pass has added a diagonal to

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def expects_backpropagation_quantities(self) -> bool:
        return True

    def accumulate_backpropagated_quantities(self, existing: Tensor, other: Tensor) -> Tensor:
        """A tensor feeding several modules collects the sum of their diagonals."""
        return existing + other

    def set_module_extension(
        self, module: type[nn.Module], extension: ModuleExtension, overwrite: bool = False
    ) -> None:
        """Use ``extension`` (a ``ModuleAdaptor``, or a ``LossAdaptor`` for a loss) for every
        module of type ``module`` in this extension's backward passes; ``overwrite=True``
        replaces an existing one (e.g. a built-in rule)."""
        if not isinstance(extension, ModuleExtension):
            raise TypeError(
                f"set_module_extension needs a ModuleAdaptor instance (hesscale.extensions."
                f"ModuleAdaptor), got {extension!r}."
            )
        existing = self._adaptor(module)
        if existing is not None and not overwrite:
            raise ValueError(
                f"{module.__name__} already has a rule ({type(existing).__name__}); pass "
                "overwrite=True to replace it."
            )
        self._own_adaptors[module] = extension

    def _adaptor(self, module_type: type[nn.Module]) -> ModuleExtension | None:
        adaptor = self._own_adaptors.get(module_type) if self._own_adaptors else None
        return ADAPTORS.get(module_type) if adaptor is None else adaptor

    def supported_modules(self) -> list[str]:
        """Names of the module types this extension instance handles."""
        return sorted(cls.__name__ for cls in {*ADAPTORS, *self._own_adaptors})

    def __call__(self, module: nn.Module, g_inp, g_out) -> None:
        adaptor = self._adaptor(type(module))
        if adaptor is None:
            if next(module.children(), None) is not None:
                return  # a container: its children carry the work
            self._reset()
            raise UnsupportedModuleError(
                f"{type(self).__name__} has no rule for {describe(module)}. Supported modules: "
                f"{', '.join(self.supported_modules())}. Add one for your own module type with "
                "set_module_extension (see hesscale.extensions.ModuleAdaptor)."
            )
        try:
            adaptor(self, module, g_inp, g_out)
        except BaseException:
            self._reset()  # the pass ends here: leave nothing behind
            raise

    # bookkeeping used by the adaptors -----------------------------------------------------

    def stored_io(self, module: nn.Module) -> tuple[Tensor, Tensor]:
        """The input and output BackPACK stored for ``module`` in the forward pass."""
        if current_graph_task_id() != self._backward_pass:
            self._start_pass()
        if id(module) in self._served:
            raise HesScaleError(
                f"{describe(module)} was called more than once in one forward pass (e.g. one "
                "nn.ReLU reused in two places). That is not supported: BackPACK keeps only its "
                "last call. Use one instance per use."
            )
        if not hasattr(module, "output") or not hasattr(module, "input0"):
            raise HesScaleError(
                f"{describe(module)} has no stored forward input/output. BackPACK frees them at "
                "the end of each backward pass: a second backward pass through the same graph "
                "(after loss.backward(retain_graph=True)) needs the earlier passes to run under "
                "`with backpack(..., retain_graph=True)` as well. (They are also missing if the "
                "forward pass ran without gradients or inside backpack.disable(), or if one "
                "module instance is called more than once in one forward pass.)"
            )
        self._served.add(id(module))
        return module.input0, module.output

    def start_loss(self, module: nn.Module, gradient: Tensor) -> None:
        """Called by each loss module: its diagonals start the recursion.

        ``gradient`` is what reached the loss's output, which must be 1 (the loss is the
        quantity differentiated). Its value is checked at the end of the pass, not here: on a
        GPU reading it is a host-device sync, which here, at the first hook of the pass,
        would stall the host until the forward pass has run and leave the GPU idle while the
        backward kernels are launched one by one. At the end every kernel of the pass is
        queued and the optimizer step that follows syncs anyway. Meta tensors have no value.
        """
        if gradient.numel() != 1:
            raise HesScaleError(self._not_the_loss_message(module, gradient))
        self._loss_gradients.append((module, gradient))
        expected, skips_a_hook = _graph_parameters(module.output)
        if skips_a_hook:
            raise HesScaleError(
                "This backward pass computes the gradient of only some tensors "
                "(loss.backward(inputs=...) or torch.autograd.grad(loss, ...)), so some modules' "
                "BackPACK hooks never run. HesScale does not support that: call "
                "loss.backward() without inputs= (gradients you do not need are cheap to ignore), "
                "or freeze parameters with requires_grad_(False)."
            )
        for param in expected:  # like the gradient: accumulate, or start afresh
            if id(param) not in self._decided:
                self._decided.add(id(param))
                if hasattr(param, self.savefield) and not continues(param, self.savefield):
                    delattr(param, self.savefield)
        self._expected.extend(expected)

    def put_quantity(self, tensor: Tensor, h: Tensor) -> None:
        """Store the diagonal w.r.t. ``tensor`` for the module that produced it."""
        key = tensor.data_ptr()
        self._layouts.setdefault(key, (tensor.shape, tensor.stride()))
        self._producers.setdefault(key, tensor.grad_fn)
        self.saved_quantities.save_quantity(key, h, self.accumulate_backpropagated_quantities)

    def take_quantity(self, module: nn.Module, output: Tensor) -> Tensor:
        """The diagonal w.r.t. ``module``'s output, in the output's shape."""
        key = output.data_ptr()
        h = self.saved_quantities.retrieve_quantity(key, delete_old=True)
        if h is None:
            return self._take_through_copy(module, output)
        self._producers.pop(key, None)
        shape, stride = self._layouts.pop(key)
        if h.shape == output.shape and (
            stride == output.stride() or _same_layout(shape, stride, output.stride())
        ):
            return h
        if (
            h.numel() == output.numel()
            and _same_layout(shape, stride, _contiguous_stride(shape))
            and output.is_contiguous()
        ):
            return h.reshape(output.shape)
        raise HesScaleError(
            f"The output of {describe(module)} reaches the next module through a view that "
            "reorders or selects entries (e.g. transpose, permute or slicing). Only reshapes are "
            "supported between extended modules; use a module (e.g. nn.Flatten) instead."
        )

    def _take_through_copy(self, module: nn.Module, output: Tensor) -> Tensor:
        """The diagonal stored for a copy of ``output`` in the same entry order (a reshape that
        copies, e.g. ``h.reshape(N, -1)`` of a channels_last ``h``); else a clear error."""
        target = output.grad_fn
        for key, producer in self._producers.items():
            if _path(producer, target, only=ORDER_PRESERVING_NODES) is not None:
                h = self.saved_quantities.retrieve_quantity(key, delete_old=True)
                del self._producers[key], self._layouts[key]
                return h.reshape(output.shape)
        for producer in self._producers.values():
            path = _path(producer, target)
            if path:
                raise HesScaleError(
                    f"The output of {describe(module)} reaches the next extended module through "
                    f"{', '.join(path)}: not an extended nn.Module (e.g. torch.relu or x + y in a "
                    "forward method), which BackPACK cannot see. Only reshapes are supported "
                    "between modules; use the nn.Module form of each operation."
                )
        raise HesScaleError(
            f"No HesScale quantity reached the output of {describe(module)}. Either the loss "
            "was not extended (extend(loss_fn)) or is not a supported loss, or this module's "
            "output passes through an operation that is not an extended nn.Module (e.g. "
            "torch.relu or x + y in a forward method), which BackPACK cannot see. Use the "
            "nn.Module form of each operation."
        )

    def put_log_prob_gradient(self, log_probs: Tensor, gradient: Tensor) -> None:
        """NLLLoss's own gradient w.r.t. its input (log-probabilities): a LogSoftmax feeding it
        directly belongs to the loss and keeps its curvature for this part in HesScaleGN."""
        key = log_probs.data_ptr()
        previous = self._log_prob_gradients.get(key)
        self._log_prob_gradients[key] = gradient if previous is None else previous + gradient

    def take_log_prob_gradient(self, output: Tensor) -> Tensor | None:
        """What ``put_log_prob_gradient`` stored for this output (None if it feeds no NLLLoss)."""
        g = self._log_prob_gradients.pop(output.data_ptr(), None)
        return None if g is None else g.reshape(output.shape)

    def add_to_parameter(self, param: Tensor, h: Tensor) -> None:
        """Add to ``param.<savefield>`` (in the parameter's dtype): summing over the uses of a
        shared parameter, and over backward passes exactly when the gradient sums (as
        ``hesscale.backward`` does: hesscale.accumulation)."""
        h = cast_like(h, param)
        previous = getattr(param, self.savefield, None)
        setattr(param, self.savefield, h if previous is None else previous + h)
        self._reached.add(id(param))

    # the pass ------------------------------------------------------------------------------

    def _start_pass(self) -> None:
        """A new backward pass reached this extension: forget what an interrupted earlier one
        left behind, and check completeness when this one ends."""
        self._reset()
        self._backward_pass = current_graph_task_id()
        self._hook_warning.start()
        queue_engine_callback(self._finish_backward)

    def _reset(self) -> None:
        self._hook_warning.stop()
        self._backward_pass = None
        self._expected = []
        self._loss_gradients = []
        self._served.clear()
        self._layouts.clear()
        self._producers.clear()
        self._log_prob_gradients.clear()
        self._decided.clear()
        self._reached.clear()
        clear_saved_quantities(self)

    def _finish_backward(self) -> None:
        expected, loss_gradients = self._expected, self._loss_gradients
        reached = set(self._reached)
        self._reset()
        for module, g in loss_gradients:
            if g.device.type != "meta" and bool(g.ne(1).any()):
                for param in expected:
                    if hasattr(param, self.savefield):
                        delattr(param, self.savefield)
                raise HesScaleError(self._not_the_loss_message(module, g))
        for param in expected:
            if id(param) in reached:
                record(param, self.savefield, getattr(param, self.savefield))
        missing = [p for p in expected if id(p) not in reached]
        if missing:
            shapes = ", ".join(str(tuple(p.shape)) for p in missing[:5])
            raise HesScaleError(
                f"{len(missing)} parameter(s) (shapes {shapes}) received a gradient but no "
                f"'{self.savefield}': the modules that own them were not extended "
                "(call backpack.extend(model)), or use them in a way BackPACK cannot see (e.g. "
                "F.linear(x, self.weight) in a forward method)."
            )

    def _not_the_loss_message(self, module: nn.Module, gradient: Tensor) -> str:
        return (
            f"The backward pass reached {describe(module)} with gradient {gradient!r}, not 1: "
            "the loss must be the last operation (call loss.backward() on the loss module's "
            "output itself, not on a scaled or transformed version of it). hesscale.backward("
            "loss) serves any loss, scaled ones included (e.g. torch.amp.GradScaler's "
            "scaler.scale(loss)), on any model."
        )


def _path(start: Node | None, target: Node | None, only: frozenset[str] | None = None):
    """Names of the graph nodes from ``start`` down to ``target`` (hooks left out), following
    the first input of each node; with ``only``, through nodes of those names alone. None if
    ``target`` is not reached within a few nodes."""
    names: list[str] = []
    node = start
    for _ in range(16):
        if node is None:
            return None
        if node is target:
            return names
        name = node.name()
        if name != BACKWARD_HOOK_NODE:
            if only is not None and name not in only:
                return None
            names.append(name)
        inputs = [n for n, _ in node.next_functions if n is not None]
        node = inputs[0] if inputs else None
    return None


def _same_layout(shape: torch.Size, stride: tuple[int, ...], other: tuple[int, ...]) -> bool:
    """Equal strides, ignoring dimensions of size 1 (their stride is arbitrary)."""
    return all(size == 1 or a == b for size, a, b in zip(shape, stride, other, strict=True))


def _contiguous_stride(shape: torch.Size) -> tuple[int, ...]:
    stride, running = [], 1
    for size in reversed(shape):
        stride.append(running)
        running *= size
    return tuple(reversed(stride))


class HesScale(DiagonalBackprop):
    """HesScale (Elsayed & Mahmood 2022): the approximate Hessian diagonal, in ``p.hesscale``.

    Each module maps h_z (diagonal w.r.t. its output) and g_z (gradient) to
    h_x = diag(J^T diag(h_z) J) + sum_k g_z[k] diag(d^2 z_k / dx^2); the loss starts the
    recursion with its exact Hessian diagonal.
    """

    second_order = True

    def __init__(self) -> None:
        super().__init__(savefield="hesscale")


class HesScaleGN(DiagonalBackprop):
    """HesScaleGN: the Gauss-Newton variant, in ``p.hesscale_gn``.

    As HesScale without the second-order term of each operation,
    h_x = diag(J^T diag(h_z) J), so every entry is >= 0 for the convex losses. A LogSoftmax
    whose output feeds NLLLoss directly is part of that loss (together they are the convex
    cross-entropy) and keeps its term for NLLLoss's part of the gradient: LogSoftmax +
    NLLLoss gives the same diagonal as CrossEntropyLoss on the logits. Anywhere else in a
    network a LogSoftmax is an operation like any other and loses its term.
    """

    second_order = False

    def __init__(self) -> None:
        super().__init__(savefield="hesscale_gn")
