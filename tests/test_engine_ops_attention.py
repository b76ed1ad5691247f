"""Scaled dot-product attention's fused nodes against the definition applied to the
decomposition matmul(q, k^T), scale, mask, softmax, matmul(., v), written out here and
evaluated by the graph oracle; and the softmax of attention's math path, per operation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hesscale.engine.backward import node_diagonals
from tests.engine_checks import check_op, leaves
from tests.engine_fused import decomposition_diagonals
from tests.oracle import assert_close

aten = torch.ops.aten
FUSED_CPU = "ScaledDotProductFlashAttentionForCpuBackward0"


def r(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def qkv(batch=2, heads=2, length=3, keys=4, dim=3, kv_heads=None, value_dim=None):
    kv_heads = heads if kv_heads is None else kv_heads
    value_dim = dim if value_dim is None else value_dim
    return (
        r(batch, heads, length, dim),
        r(batch, kv_heads, keys, dim),
        r(batch, kv_heads, keys, value_dim),
    )


def attention_decomposition(q, k, v, attn_mask=None, is_causal=False, scale=None,
                            enable_gqa=False):  # fmt: skip
    """scaled_dot_product_attention written as primitive operations."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    if enable_gqa:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        scores = scores.masked_fill(~allowed, -math.inf)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, -math.inf)
    elif attn_mask is not None:
        scores = scores + attn_mask
    probs = aten._safe_softmax(scores, -1)  # softmax; 0 on rows that see no key
    return probs @ v


torch.manual_seed(0)
BOOL_MASK = torch.rand(3, 4) > 0.4
BOOL_MASK[:, 0] = True
ROW_MASKED = BOOL_MASK.clone()
ROW_MASKED[1] = False  # a query that sees no key: its output and diagonals are 0
FLOAT_MASK = r(2, 1, 3, 4)
NEG_INF_MASK = FLOAT_MASK.clone().masked_fill(~BOOL_MASK, -math.inf)

# (id, options, inputs, grad)
FUSED_CASES = [
    ("plain", {}, qkv(), None),
    ("causal", {"is_causal": True}, qkv(keys=3), None),
    ("causal-more-keys", {"is_causal": True}, qkv(keys=5), None),
    ("causal-fewer-keys", {"is_causal": True}, qkv(length=4, keys=2), None),
    ("scale", {"scale": 0.3}, qkv(), None),
    ("bool-mask", {"attn_mask": BOOL_MASK}, qkv(), None),
    ("bool-mask-masked-row", {"attn_mask": ROW_MASKED}, qkv(), None),
    ("float-mask", {"attn_mask": FLOAT_MASK, "scale": 0.7}, qkv(), None),
    ("float-mask-inf", {"attn_mask": NEG_INF_MASK}, qkv(), None),
    ("gqa", {"enable_gqa": True}, qkv(heads=4, kv_heads=2), None),
    ("gqa-causal", {"enable_gqa": True, "is_causal": True}, qkv(heads=4, kv_heads=1, keys=3),
     None),
    ("value-only", {}, qkv(), (False, False, True)),
    ("query-key-only", {"is_causal": True}, qkv(keys=3), (True, True, False)),
    ("one-query", {}, qkv(batch=1, heads=1, length=1, keys=2), None),
]  # fmt: skip


@pytest.mark.parametrize("second_order", [True, False], ids=["hesscale", "gn"])
@pytest.mark.parametrize(
    "options, inputs, grad", [c[1:] for c in FUSED_CASES], ids=[c[0] for c in FUSED_CASES]
)
def test_fused_attention_matches_decomposition(options, inputs, grad, second_order):
    xs = leaves(*inputs, grad=grad)
    out = F.scaled_dot_product_attention(*xs, **options)
    node = out.grad_fn
    assert node.name() == FUSED_CPU
    generator = torch.Generator().manual_seed(1)
    h = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    g = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    got = node_diagonals(node, [h], [g], second_order=second_order)
    expected = decomposition_diagonals(
        lambda q, k, v: attention_decomposition(q, k, v, **options), xs, [h], [g], second_order
    )
    for x, got_x, expected_x in zip(xs, got, expected, strict=True):
        if x.requires_grad:
            assert_close(got_x, expected_x)
        else:
            assert got_x is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [{}, {"is_causal": True}, {"attn_mask": BOOL_MASK[:, :3]}])
def test_cpu_records_the_fused_node(dtype, options):
    """The fused CPU kernel runs in float32 and float64 alike (not the math path)."""
    q, k, v = (t.to(dtype).requires_grad_() for t in qkv(keys=3))
    assert F.scaled_dot_product_attention(q, k, v, **options).grad_fn.name() == FUSED_CPU


# (id, fn, inputs, grad): fn(*inputs) records one node
SCORES_WITH_MASKED_ROW = r(2, 3, 4).masked_fill(~ROW_MASKED, -math.inf)
CASES = [
    ("safe-softmax", lambda x: aten._safe_softmax(x, -1), (r(2, 3, 4),), None),
    ("safe-softmax-masked-row", lambda x: aten._safe_softmax(x, -1), (SCORES_WITH_MASKED_ROW,),
     None),
]  # fmt: skip


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)


COVERED_ELSEWHERE = {
    FUSED_CPU: "test_engine_ops_attention.py::test_fused_attention_matches_decomposition",
}


# CUDA kernels: the same rule with each kernel's saved names; untested without a GPU ----------

CUDA_KERNELS = [
    # (node, backend, dtype, relative tolerance, supports an additive mask)
    ("ScaledDotProductEfficientAttentionBackward0", "EFFICIENT_ATTENTION", torch.float32, 1e-3,
     True),
    ("ScaledDotProductFlashAttentionBackward0", "FLASH_ATTENTION", torch.float16, 3e-2, False),
    ("ScaledDotProductCudnnAttentionBackward0", "CUDNN_ATTENTION", torch.float16, 3e-2, False),
]  # fmt: skip


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernels need a GPU")
@pytest.mark.parametrize("second_order", [True, False], ids=["hesscale", "gn"])
@pytest.mark.parametrize("options", ["plain", "causal", "mask", "mask-grad"])
@pytest.mark.parametrize("kernel", CUDA_KERNELS, ids=[k[1] for k in CUDA_KERNELS])
def test_cuda_fused_attention_matches_decomposition(kernel, options, second_order):
    """Each CUDA kernel's node against the float64 definition on the CPU, to the precision of
    the kernel's dtype (relative to the largest entry)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    name, backend, dtype, tolerance, masks = kernel
    if options.startswith("mask") and not masks:
        pytest.skip(f"{backend} takes no mask")
    torch.manual_seed(0)
    tensors = list(qkv(batch=2, heads=2, length=4, keys=4, dim=8))
    kwargs = {"is_causal": options == "causal"}
    if options.startswith("mask"):
        tensors.append(r(2, 2, 4, 4))
    grad = (True,) * 3 + ((options == "mask-grad",) if options.startswith("mask") else ())
    xs = [t.to("cuda", dtype).requires_grad_(wants) for t, wants in zip(tensors, grad, strict=True)]
    with sdpa_kernel(getattr(SDPBackend, backend)):
        out = F.scaled_dot_product_attention(*xs[:3], attn_mask=xs[3] if len(xs) > 3 else None,
                                             **kwargs)  # fmt: skip
    node = out.grad_fn
    assert node.name() == name
    h, g = r(*out.shape), r(*out.shape)
    got = node_diagonals(node, [h.to("cuda", dtype)], [g.to("cuda", dtype)], second_order)

    def decomposition(q, k, v, mask=None):
        return attention_decomposition(q, k, v, attn_mask=mask, **kwargs)

    expected = decomposition_diagonals(decomposition, tensors, [h], [g], second_order)
    for j, wants in enumerate(grad):
        if not wants:
            continue
        got_j = got[j].double().cpu()
        torch.testing.assert_close(
            got_j, expected[j], rtol=tolerance, atol=tolerance * expected[j].abs().max()
        )


for _node, *_ in CUDA_KERNELS:
    COVERED_ELSEWHERE[_node] = (
        "test_engine_ops_attention.py::test_cuda_fused_attention_matches_decomposition "
        "(runs only where CUDA is available)"
    )


def test_saved_names_the_rule_reads():
    """derivatives.yaml's names for what the fused CPU node saves: fails loudly when a torch
    release renames one (hesscale.internals.saved_value reads them)."""
    from hesscale.internals import saved_value

    q, k, v = (torch.randn(1, 2, 3, 4, requires_grad=True) for _ in range(3))
    mask = torch.rand(3, 3) > 0.5
    node = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5).grad_fn
    assert node.name() == FUSED_CPU
    assert torch.equal(saved_value(node, "query"), q)
    assert torch.equal(saved_value(node, "key"), k)
    assert torch.equal(saved_value(node, "value"), v)
    assert saved_value(node, "logsumexp").shape == (1, 2, 3)
    assert saved_value(node, "attn_mask").dtype == q.dtype  # a boolean mask as 0 / -inf
    assert saved_value(node, "scale") == 0.5
    assert saved_value(node, "is_causal") is False
    assert saved_value(node, "dropout_p") == 0.0


# torch's math path: the primitive operations it records instead of a fused node -------------

MATH_PATH = {
    # id: (shapes of q, k, v, additive mask or None, whether the mask is learned)
    "learned-mask": ((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4), (2, 1, 3, 5)),
    "value-dim": ((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 3), None),
    "5d": ((2, 2, 2, 3, 4), (2, 2, 2, 5, 4), (2, 2, 2, 5, 4), None),
}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("case", MATH_PATH)
def test_math_path_matches_oracle(case):
    """A mask that requires grad, a value head size different from the query's, or more than
    four dimensions make torch decompose attention itself (bmm, _safe_softmax, add, ...)."""
    from tests.engine_checks import check_graph, node_names

    torch.manual_seed(0)
    q_shape, k_shape, v_shape, mask_shape = MATH_PATH[case]
    params = {"q": r(*q_shape), "k": r(*k_shape), "v": r(*v_shape)}
    if mask_shape is not None:
        params["mask"] = r(*mask_shape)
    target = r(*q_shape[:-1], v_shape[-1])

    def loss_fn(p, target):
        out = F.scaled_dot_product_attention(p["q"], p["k"], p["v"], attn_mask=p.get("mask"))
        return ((out - target) ** 2).sum(), (out,)

    leaves_ = {n: t.clone().requires_grad_() for n, t in params.items()}
    names = node_names(lambda: loss_fn(leaves_, target)[0])
    assert "SafeSoftmaxBackward0" in names and FUSED_CPU not in names
    check_graph(loss_fn, params, target, name_output=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_kind", ["bool", "float", "causal"])
def test_masked_keys_with_huge_scores_get_probability_exactly_zero(dtype, mask_kind):
    """The rebuilt probabilities, where a masked key's score s q.k - lse is far above 0 (lse
    counts only the keys a query sees): exactly 0 there, finite everywhere, the softmax over
    the allowed keys elsewhere (float64 reference)."""
    from hesscale.rules.attention import attention_probabilities

    q, k = r(1, 2, 3, 4), r(1, 2, 3, 4)
    k[..., 2, :] = 50 * q[..., 0, :]  # key 2: a huge score for query 0, which may not see it
    allowed = torch.ones(3, 3, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-2, -1)) * 0.5
    masked = scores.masked_fill(~allowed, -math.inf)
    expected = torch.softmax(masked, -1)
    options = {
        "bool": {"mask": allowed},
        "float": {"mask": torch.zeros(3, 3, dtype=dtype).masked_fill(~allowed, -math.inf)},
        "causal": {"is_causal": True},
    }[mask_kind]
    probs = attention_probabilities(
        q.to(dtype), k.to(dtype), torch.logsumexp(masked, -1).to(dtype), 0.5, **options
    )
    assert torch.isfinite(probs).all()
    assert (probs[..., ~allowed] == 0).all()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(probs.double(), expected, rtol=tolerance, atol=tolerance)
