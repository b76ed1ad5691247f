"""Scaled dot-product attention (formulas: rules.attention, rules.softmax).

torch.nn.functional.scaled_dot_product_attention records one fused node per call, whichever
backend ran: on the CPU ``ScaledDotProductFlashAttentionForCpuBackward0`` (every floating dtype,
no dropout, a mask that needs no gradient); on CUDA the flash, memory-efficient or cuDNN node.
Each rule equals the definition applied to the decomposition matmul(q, k^T), scale, mask,
softmax, matmul(., v), with the probabilities rebuilt from the saved query, key and
log-sum-exp. When torch takes its math path instead (dropout, a mask that requires grad, other
shapes), it records the primitive operations, among them ``SafeSoftmaxBackward0``.
"""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.activations import softmax_
from hesscale.engine.registry import register
from hesscale.internals import saved_value
from hesscale.rules import attention
from hesscale.rules.precision import working_dtype


def _check_fused_attention(node, cuda_kernel: bool = False) -> str | None:
    if saved_value(node, "dropout_p") > 0:
        return (
            "dropout inside fused attention: the random mask it drew cannot be recovered. Use "
            "dropout_p=0, or torch's math backend (torch.nn.attention.sdpa_kernel("
            "SDPBackend.MATH)), which records the dropout as a product hesscale supports"
        )
    query, key = saved_value(node, "query"), saved_value(node, "key")
    if query.is_nested:
        return "nested (variable-length) query / key / value tensors"
    if cuda_kernel and saved_value(node, "is_causal") and query.shape[-2] != key.shape[-2]:
        return "is_causal with a different number of queries and keys on a CUDA kernel"
    return None


def _check_cuda_attention(node) -> str | None:
    return _check_fused_attention(node, cuda_kernel=True)


# One node per kernel; each saves its log-sum-exp and additive mask under its own names.
@register("ScaledDotProductFlashAttentionForCpuBackward0", check=_check_fused_attention)
def flash_attention_cpu(call: NodeCall):
    return scaled_dot_product_attention(call, "logsumexp", "attn_mask")


@register("ScaledDotProductFlashAttentionBackward0", check=_check_cuda_attention)
def flash_attention(call: NodeCall):
    return scaled_dot_product_attention(call, "logsumexp", None)


@register("ScaledDotProductEfficientAttentionBackward0", check=_check_cuda_attention)
def efficient_attention(call: NodeCall):
    return scaled_dot_product_attention(call, "log_sumexp", "attn_bias")


@register("ScaledDotProductCudnnAttentionBackward0", check=_check_cuda_attention)
def cudnn_attention(call: NodeCall):
    return scaled_dot_product_attention(call, "logsumexp", "attn_bias")


def scaled_dot_product_attention(call: NodeCall, lse_name: str, mask_name: str | None):
    """O = softmax(s q k^T + M) v, defined as its decomposition (see rules.attention); one
    diagonal for each of q, k, v (and the memory-efficient kernel's additive bias).
    ``lse_name`` / ``mask_name``: the names the node saved the log-sum-exp and the additive
    mask under (None: no mask)."""
    h, g = call.h, call.g
    if h is None and g is None:
        return (None,) * len(call.grad_in)
    query, key, value = call.saved("query"), call.saved("key"), call.saved("value")
    logsumexp = call.saved(lse_name)
    # rules.precision's policy: the operands' common dtype, float16 as float32 (half-precision
    # kernels keep their log-sum-exp in float32, so those compute in float32)
    dtype = working_dtype(query.dtype, logsumexp.dtype, *(t.dtype for t in (h, g) if t is not None))
    # contiguous once: the rules' batched products view them as (batch * heads, length, dim)
    query, key, value = (t.to(dtype).contiguous() for t in (query, key, value))
    logsumexp = logsumexp.to(dtype)
    heads, length = query.shape[-3], query.shape[-2]
    if logsumexp.dim() == query.dim():  # cuDNN keeps a trailing 1
        logsumexp = logsumexp.squeeze(-1)
    logsumexp = logsumexp[..., :length]  # the memory-efficient kernel pads the queries
    mask = None if mask_name is None else call.saved(mask_name)
    scale = attention.default_scale(query, call.saved("scale"))
    probs = attention.attention_probabilities(
        query,
        attention.repeat_heads(key, heads),
        logsumexp,
        scale,
        None if mask is None else mask.to(dtype) if mask.is_floating_point() else mask,
        bool(call.saved("is_causal")),
    )
    needs = tuple(call.needs(i) for i in range(len(call.grad_in))) + (False,)
    diagonals = attention.attention_diagonals(
        query,
        key,
        value,
        probs,
        scale,
        None if h is None else h.to(dtype),
        None if g is None else g.to(dtype),
        needs[:4],
    )
    return diagonals[: len(call.grad_in)]


@register("SafeSoftmaxBackward0")
def safe_softmax(call: NodeCall):
    """Softmax that gives 0 on rows where every entry is -inf (attention's math path): the
    softmax rule, whose terms all carry a factor p = 0 on those rows."""
    return softmax_(call)
