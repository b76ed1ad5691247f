"""Every use of torch's (and BackPACK's) private or debugging-only API in hesscale, in one place.

PyTorch and BackPACK document none of these as stable. Each has a test in
``tests/test_internals.py`` that fails loudly when a release renames or changes it; fix it here
and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor  # (imported by torch itself)

Node = torch.autograd.graph.Node


def saved_value(node: Node, name: str) -> Any:
    """What an autograd node saved in the forward pass under ``name`` (``node._saved_<name>``).

    The names are those of torch's derivatives.yaml (e.g. ``self``, ``mat1``, ``result``);
    ``tests/test_internals.py`` checks the ones common models record.
    """
    return _signed(getattr(node, "_saved_" + name))


def _signed(value: Any) -> Any:
    """torch 2.x hands some saved int64 values (e.g. a softmax's dim=-1) to Python as unsigned:
    2**64 - 1 for -1. Map them back."""
    if isinstance(value, int) and value >= 2**63:
        return value - 2**64
    if isinstance(value, tuple) and any(isinstance(v, int) and v >= 2**63 for v in value):
        return tuple(_signed(v) for v in value)
    return value


def has_saved_value(node: Node, name: str) -> bool:
    return hasattr(node, "_saved_" + name)


def accumulated_variable(node: Node) -> torch.Tensor | None:
    """The leaf tensor an ``AccumulateGrad`` node accumulates into (None for other nodes)."""
    return getattr(node, "variable", None)


_SAVED_TENSOR_NAMES: dict[type, tuple[str, ...]] = {}


def saved_under_checkpoint(node: Node) -> bool:
    """Whether ``node`` saved its tensors under non-reentrant activation checkpointing
    (``torch.utils.checkpoint(..., use_reentrant=False)``): their ``SavedTensor`` (``_raw_saved_*``)
    carries the unpack hook of torch's ``_checkpoint_hook``, which recomputes the block and lets
    each tensor be unpacked only once."""
    names = _SAVED_TENSOR_NAMES.get(type(node))
    if names is None:
        names = tuple(a for a in dir(type(node)) if a.startswith("_raw_saved_"))
        _SAVED_TENSOR_NAMES[type(node)] = names
    for name in names:
        saved = getattr(node, name, None)
        for item in saved if isinstance(saved, list | tuple) else (saved,):
            hook = getattr(item, "unpack_hook", None)
            if hook is not None:
                return "_checkpoint_hook" in getattr(hook, "__qualname__", "")
    return False


def forward_traceback(node: Node) -> str | None:
    """The forward-pass traceback autograd's anomaly mode stores in a node, if it ran (the
    last frames, where the operation was called)."""
    frames = node.metadata.get("traceback_")
    if not frames:
        return None
    return "".join(frames[-4:]) if isinstance(frames, list) else str(frames)


def apply_backward(node: Node, *grads_out: torch.Tensor | None) -> tuple:
    """Run a node's backward formula on ``grads_out`` (one per forward output; None: zero):
    its vector-Jacobian product, one entry per input (None where an input needs none).
    Calling a node directly runs neither its hooks nor autograd's bookkeeping."""
    result = node(*grads_out)
    return result if isinstance(result, tuple) else (result,)


def wrapped_node(node: Node) -> Node | None:
    """The node of the in-place operation a ``CopySlices`` node wraps (``_wrapped_node``): an
    in-place operation on a view records CopySlices on the view's base, which runs the wrapped
    node's backward formula on the view's part of the gradient. None for other nodes."""
    return getattr(node, "_wrapped_node", None)


def output_dtype(node: Node, index: int) -> torch.dtype:
    """The dtype of forward output ``index`` of ``node`` (``_input_metadata``)."""
    return node._input_metadata[index].dtype


def output_shape(node: Node, index: int) -> tuple[int, ...]:
    """The shape of forward output ``index`` of ``node`` (the tensor its gradient has),
    from autograd's ``_input_metadata`` (a node's inputs are the forward outputs)."""
    return tuple(node._input_metadata[index].shape)


def grad_stamp(grad: torch.Tensor) -> tuple[int, int]:
    """Identifies a gradient tensor's current contents: its identity and autograd's version
    counter (``Tensor._version``), which every in-place change (accumulation, ``zero_()``)
    increments."""
    return id(grad), grad._version


# DistributedDataParallel -------------------------------------------------------------------


def ddp_syncs_this_backward(ddp: torch.nn.Module) -> bool:
    """Whether DDP all-reduces the gradients in the backward pass of its last forward: DDP
    decides in the forward (False inside ``no_sync()``) and records it in
    ``require_forward_param_sync``."""
    return bool(ddp.require_forward_param_sync)


def ddp_parameters(ddp: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters DDP averages: those of ``ddp.module`` that require grad, minus
    ``parameters_to_ignore`` (fully qualified names)."""
    ignored = set(ddp.parameters_to_ignore)
    return [
        p for name, p in ddp.module.named_parameters() if p.requires_grad and name not in ignored
    ]


def ddp_process_group(ddp: torch.nn.Module):
    return ddp.process_group


def ddp_of_output_node(node: Node) -> torch.nn.Module | None:
    """The DDP module whose output sink recorded ``node`` (a ``_DDPSinkBackward``): DDP's
    autograd.Function keeps a weak reference to it in ``ctx.ddp_weakref``."""
    ref = getattr(node, "ddp_weakref", None)
    return None if ref is None else ref()


# torch.amp.GradScaler ------------------------------------------------------------------------


def unscale_through(scaler, optimizer) -> tuple[torch.Tensor, torch.Tensor]:
    """For an optimizer whose ``step`` takes ``grad_scaler`` (GradScaler passes itself to
    optimizers with ``_step_supports_amp_scaling``): unscale its gradients through the scaler
    unless ``scaler.unscale_(optimizer)`` already did, and return (1 / scale, the number of
    non-finite gradients found), from the scaler's private per-optimizer state."""
    from torch.amp.grad_scaler import OptState

    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.READY:
        scaler.unscale_(optimizer)
    inv_scale = scaler._scale.double().reciprocal().float()
    found_inf = sum(v.to(inv_scale.device) for v in state["found_inf_per_device"].values())
    return inv_scale, found_inf


# --- the autograd engine (used by the BackPACK adaptor's per-pass bookkeeping) --------------


def current_graph_task_id() -> int:
    """An id of the backward pass being run (-1 outside one): tells passes apart."""
    return torch._C._current_graph_task_id()


def queue_engine_callback(callback: Callable[[], None]) -> None:
    """Run ``callback`` when the current backward pass ends (only if it ends without error);
    an exception it raises comes out of ``backward()``."""
    torch.autograd.Variable._execution_engine.queue_callback(callback)


def will_engine_execute(node: Node) -> bool:
    """Whether the current backward pass will run ``node`` (False for the nodes that
    ``backward(inputs=...)`` or ``torch.autograd.grad`` leave out). Not for leaves' nodes."""
    return torch._C._will_engine_execute_node(node)


# Graph nodes that module hooks and shape-only operations record (node.name()).
BACKWARD_HOOK_NODE = "BackwardHookFunctionBackward"  # a full backward hook's identity node
# reshape / view / contiguous: the entries in the same (logical, row-major) order
ORDER_PRESERVING_NODES = frozenset(
    {"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "CloneBackward0"}
)


# --- BackPACK --------------------------------------------------------------------------------


def clear_saved_quantities(extension: Any) -> None:
    """Drop every quantity a BackPACK extension holds between modules (its SavedQuantities
    keeps them in a private dict)."""
    extension.saved_quantities._saved_quantities.clear()


def saved_quantity_count(extension: Any) -> int:
    return len(extension.saved_quantities._saved_quantities)


# --- ATen kernels without a public Python API ------------------------------------------------


def adaptive_avg_pool_backward(grad: Tensor, x: Tensor, spatial_dims: int) -> Tensor:
    """The vector-Jacobian product of adaptive average pooling over the last ``spatial_dims``
    (2 or 3) dims of ``x``: ``grad`` spread evenly over each window (ATen's own kernel)."""
    kernel = {
        2: torch.ops.aten._adaptive_avg_pool2d_backward,
        3: torch.ops.aten._adaptive_avg_pool3d_backward,
    }[spatial_dims]
    return kernel(grad, x)


def output_count(node: Node) -> int:
    """How many forward outputs ``node`` has (the gradients its backward formula takes)."""
    return len(node._input_metadata)


# --- nodes only CUDA / ROCm builds record ----------------------------------------------------
# A CPU run never records these, so their saved attributes are checked against the declarations
# in the installed wheel (torch/include/torch/csrc/autograd/generated/Functions.h) by
# tests/test_internals.py, and each rule is tested on stand-in nodes holding those attributes.

# The name a batch-norm node gives eps (the saved tensors are the same for all three: input,
# weight, running_mean, running_var, training, result1 = batch mean, result2 = batch invstd).
BATCH_NORM_EPSILON = {
    "NativeBatchNormBackward0": "eps",
    "CudnnBatchNormBackward0": "epsilon",
    "MiopenBatchNormBackward0": "epsilon",
}

# What each such node saves that a rule reads (the names of derivatives.yaml).
GPU_NODE_SAVED = {
    "CudnnBatchNormBackward0": (
        "input", "weight", "running_mean", "running_var", "training", "epsilon", "result1",
        "result2",
    ),
    "MiopenBatchNormBackward0": (
        "input", "weight", "running_mean", "running_var", "training", "epsilon", "result1",
        "result2",
    ),
    # _cudnn_rnn: result0 is the output sequence; weight the flat parameter list
    # (weight_stride0 tensors per layer and direction: w_ih, w_hh[, b_ih, b_hh][, w_hr])
    "CudnnRnnBackward0": (
        "input", "weight", "weight_stride0", "hx", "cx", "mode", "hidden_size", "proj_size",
        "num_layers", "batch_first", "dropout", "train", "bidirectional", "batch_sizes",
        "result0",
    ),
    "CudnnGridSamplerBackward0": ("self", "grid"),
    "ScaledDotProductFlashAttentionBackward0": (
        "query", "key", "value", "logsumexp", "scale", "is_causal", "dropout_p",
    ),
    "ScaledDotProductEfficientAttentionBackward0": (
        "query", "key", "value", "log_sumexp", "attn_bias", "scale", "is_causal", "dropout_p",
    ),
    "ScaledDotProductCudnnAttentionBackward0": (
        "query", "key", "value", "logsumexp", "attn_bias", "scale", "is_causal", "dropout_p",
    ),
}  # fmt: skip

# cuDNN's recurrent modes (_cudnn_rnn's ``mode``, as torch numbers them)
CUDNN_RNN_MODES = {0: "RNN_RELU", 1: "RNN_TANH", 2: "LSTM", 3: "GRU"}


def is_concrete_cpu(t: Tensor) -> bool:
    """Whether ``t`` holds real values on the CPU, outside any tracing (no fake tensor, no
    ``TorchDispatchMode`` such as ``make_fx``'s active), so that reading a value from it
    (``.item()``) costs no device synchronisation and bakes nothing into a traced graph."""
    return (
        t.device.type == "cpu"
        and not isinstance(t, FakeTensor)
        and torch._C._len_torch_dispatch_stack() == 0
    )


# --- tracing for hesscale.compile --------------------------------------------------------------


def trace_aten(fn: Callable, *args: Any) -> tuple[torch.fx.GraphModule, list[Tensor]]:
    """``fn`` traced into one graph of ATen operations on fake tensors (no real computation,
    no side effects), autograd's backward pass included (``make_fx``).

    Tensors ``fn`` reads that are not among ``args`` (closed over, or attributes of a module
    that are neither parameters nor buffers) are lifted to extra inputs after ``args``, so that
    the graph reads their current values on every call; returns (graph, those tensors). The
    graph takes its inputs flat and positionally."""
    import operator

    from torch.fx.experimental.proxy_tensor import make_fx

    graph_module = make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(*args)
    graph = graph_module.graph
    graph._codegen = torch.fx.graph.CodeGen()  # plain positional inputs and outputs
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    constants = []
    for node in [n for n in graph.nodes if n.op == "get_attr"]:
        value = operator.attrgetter(node.target)(graph_module)
        if not isinstance(value, Tensor):
            continue
        with graph.inserting_after(placeholders[-1]):
            placeholders.append(graph.placeholder(f"lifted_{len(constants)}"))
        node.replace_all_uses_with(placeholders[-1])
        graph.erase_node(node)
        constants.append(value)
    graph_module.recompile()
    return graph_module, constants


def inductor_step_options() -> dict[str, Any]:
    """Inductor options for a traced training step (hesscale.compile): its locality pass off.

    A graph with forward and backward traced together reaches Inductor as an inference graph,
    on which Inductor runs ``reorder_for_locality`` (moving each operation's producers to just
    before it); on training graphs it does not. On the traced step that pass separates each
    rule's work from the backward operation that reads the same tensors, which then cannot
    share a fused kernel (the GPT of the cost study, four interleaved runs: 1.74-1.79x plain
    compiled with it, 1.62-1.69x without). Empty where the installed Inductor has no such
    option."""
    import torch._inductor.config as inductor_config

    return (
        {"reorder_for_locality": False} if hasattr(inductor_config, "reorder_for_locality") else {}
    )


def reparametrized(module: torch.nn.Module, tensors: dict[str, Tensor]):
    """A context in which ``module``'s parameters and buffers named in ``tensors`` are those
    tensors (what ``torch.func.functional_call`` does around a call of the module)."""
    from torch.nn.utils.stateless import _reparametrize_module

    return _reparametrize_module(module, tensors, tie_weights=True)


def compiled_module_types() -> tuple[type, ...]:
    """The wrapper class ``torch.compile(module)`` returns (its original is ``_orig_mod``)."""
    from torch._dynamo.eval_frame import OptimizedModule

    return (OptimizedModule,)


def inline_compiled_code():
    """A context in which code wrapped with ``torch.compile`` runs as plain Python when traced
    (dynamo otherwise refuses to be traced into: ``error_on_nested_fx_trace``)."""
    import torch._dynamo

    return torch._dynamo.config.patch(error_on_nested_fx_trace=False)


class _MultiTensorOps:
    """torch's multi-tensor operations, ``torch._foreach_<name>`` (as torch.optim uses them for
    its ``foreach`` implementations): ``multi_tensor.lerp_(ms, gs, w)`` is
    ``torch._foreach_lerp_(ms, gs, w)``. The names hesscale uses are ``MULTI_TENSOR_OPS``."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return getattr(torch, "_foreach_" + name)


multi_tensor = _MultiTensorOps()
MULTI_TENSOR_OPS = (
    "abs", "add_", "addcdiv_", "addcmul_", "clamp_max_", "clamp_min_", "div", "div_", "lerp_",
    "maximum", "maximum_", "mul", "mul_", "neg", "norm", "pow_", "sqrt", "sqrt_", "sub_",
)  # fmt: skip
