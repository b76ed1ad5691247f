"""HesScale and HesScaleGN as BackPACK extensions."""

from __future__ import annotations

import torch
from backpack.extensions.backprop_extension import FAIL_ERROR, BackpropExtension
from torch import Tensor, nn

from hesscale.extensions.base import HesScaleError, UnsupportedModuleError, describe
from hesscale.extensions.registry import ADAPTORS, supported_modules


def _graph_parameters(root: Tensor) -> list[nn.Parameter]:
    """Parameters requiring grad that the backward pass from ``root`` will reach."""
    found: dict[int, nn.Parameter] = {}
    seen: set = set()
    stack = [root.grad_fn]
    while stack:  # runs once per backward pass: kept lean (no getattr defaults, no id())
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf, no further nodes
            variable = node.variable
            if isinstance(variable, nn.Parameter) and variable.requires_grad:
                found[id(variable)] = variable
        else:
            stack.extend(next_node for next_node, _ in node.next_functions)
    return list(found.values())


class DiagonalBackprop(BackpropExtension):
    """Backpropagates a diagonal Hessian approximation from the loss through the network.

    After ``with backpack(ext): loss.backward()`` every parameter that requires grad holds
    ``param.<savefield>``, same shape and dtype as the parameter.
    """

    second_order: bool = True

    def __init__(self, savefield: str) -> None:
        super().__init__(savefield=savefield, module_exts={}, fail_mode=FAIL_ERROR)
        self._layouts: dict[int, tuple[torch.Size, tuple[int, ...]]] = {}
        self._expected: list[nn.Parameter] = []
        self._backward_pass: int | None = None  # autograd's id of the pass being served

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def expects_backpropagation_quantities(self) -> bool:
        return True

    def accumulate_backpropagated_quantities(self, existing: Tensor, other: Tensor) -> Tensor:
        """A tensor feeding several modules collects the sum of their diagonals."""
        return existing + other

    def __call__(self, module: nn.Module, g_inp, g_out) -> None:
        adaptor = ADAPTORS.get(type(module))
        if adaptor is None:
            if next(module.children(), None) is not None:
                return  # a container: its children carry the work
            raise UnsupportedModuleError(
                f"{type(self).__name__} has no rule for {describe(module)}. Supported modules: "
                f"{', '.join(supported_modules())}."
            )
        adaptor(self, module, g_inp, g_out)

    # bookkeeping used by the adaptors -----------------------------------------------------

    def put_quantity(self, tensor: Tensor, h: Tensor) -> None:
        """Store the diagonal w.r.t. ``tensor`` for the module that produced it."""
        key = tensor.data_ptr()
        self._layouts.setdefault(key, (tensor.shape, tensor.stride()))
        self.saved_quantities.save_quantity(key, h, self.accumulate_backpropagated_quantities)

    def take_quantity(self, module: nn.Module, output: Tensor) -> Tensor:
        """The diagonal w.r.t. ``module``'s output, in the output's shape."""
        key = output.data_ptr()
        h = self.saved_quantities.retrieve_quantity(key, delete_old=True)
        if h is None:
            raise HesScaleError(
                f"No HesScale quantity reached the output of {describe(module)}. Either the loss "
                "was not extended (extend(loss_fn)) or is not a supported loss, or this module's "
                "output passes through an operation that is not an extended nn.Module (e.g. "
                "torch.relu or x + y in a forward method), which BackPACK cannot see. Use the "
                "nn.Module form of each operation."
            )
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

    def add_to_parameter(self, param: Tensor, h: Tensor) -> None:
        """Set ``param.<savefield>``, summing over the uses of a shared parameter."""
        previous = getattr(param, self.savefield, None)
        setattr(param, self.savefield, h if previous is None else previous + h)

    def start_backward(self, loss: Tensor) -> None:
        """Called by each loss: forget stale results and check completeness at the end.

        A backward pass that was interrupted (an error in any hook) never reaches its end, so
        whatever it left behind is dropped when the next pass starts here.
        """
        backward_pass = torch._C._current_graph_task_id()
        if backward_pass != self._backward_pass:
            self._reset()
            self._backward_pass = backward_pass
            torch.autograd.Variable._execution_engine.queue_callback(self._finish_backward)
        expected = _graph_parameters(loss)
        for param in expected:
            if hasattr(param, self.savefield):
                delattr(param, self.savefield)
        self._expected.extend(expected)

    def _reset(self) -> None:
        self._expected = []
        self._backward_pass = None
        self._layouts.clear()
        self.saved_quantities._saved_quantities.clear()

    def _finish_backward(self) -> None:
        expected = self._expected
        self._reset()
        missing = [p for p in expected if not hasattr(p, self.savefield)]
        if missing:
            shapes = ", ".join(str(tuple(p.shape)) for p in missing[:5])
            raise HesScaleError(
                f"{len(missing)} parameter(s) (shapes {shapes}) received a gradient but no "
                f"'{self.savefield}': the modules that own them were not extended "
                "(call backpack.extend(model)), or use them in a way BackPACK cannot see (e.g. "
                "F.linear(x, self.weight) in a forward method)."
            )


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
    h_x = diag(J^T diag(h_z) J). LogSoftmax keeps its term: log-softmax belongs to the
    convex log-likelihood, so LogSoftmax + NLLLoss gives the same diagonal as
    CrossEntropyLoss on the logits.
    """

    second_order = False

    def __init__(self) -> None:
        super().__init__(savefield="hesscale_gn")
