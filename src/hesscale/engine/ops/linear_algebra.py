"""Matrix products: mm, addmm (nn.Linear), bmm, baddbmm, mv, dot, and nn.Bilinear (formulas:
rules.matmul, rules.bilinear)."""

from __future__ import annotations

from hesscale.engine.call import NodeCall
from hesscale.engine.ops.common import scaled
from hesscale.engine.registry import register
from hesscale.internals import has_saved_value, saved_value
from hesscale.rules import arithmetic, matmul
from hesscale.rules import bilinear as bilinear_rules


def _product(call: NodeCall, left: str, right: str, alpha: float = 1.0):
    """h for the two factors of z = alpha * left @ right."""
    h = call.h
    if h is None:
        return None, None
    first, second = len(call.grad_in) - 2, len(call.grad_in) - 1
    h_left = h_right = None
    if call.needs(first):
        h_left = scaled(matmul.matmul_left(h, call.saved(right)), alpha)
    if call.needs(second):  # in the layout of the right factor (a weight's, for nn.Linear)
        transposed = _column_major(call, right)
        h_right = scaled(matmul.matmul_right(h, call.saved(left), transposed), alpha)
    return h_left, h_right


def _column_major(call: NodeCall, name: str) -> bool:
    """Whether the matrix saved as ``name`` is stored transposed (W^T of nn.Linear); torch saves
    its strides even when it does not save the matrix itself."""
    if not has_saved_value(call.node, name + "_sym_strides"):
        return False
    strides = call.saved(name + "_sym_strides")
    return len(strides) == 2 and strides[0] == 1 and strides[1] != 1


@register("MmBackward0", "BmmBackward0")
def mm(call: NodeCall):
    """z = a @ b."""
    return _product(call, "self", "mat2")


@register("AddmmBackward0")
def addmm(call: NodeCall):
    """z = beta M + alpha a @ b (nn.Linear: M the bias, b the transposed weight):
    h_M = beta^2 h_z, plus the product's."""
    alpha = call.saved("alpha")
    return (scaled(call.h, call.saved("beta")), *_product(call, "mat1", "mat2", alpha))


@register("BaddbmmBackward0")
def baddbmm(call: NodeCall):
    """z = beta M + alpha a @ b, batched."""
    alpha = call.saved("alpha")
    return (scaled(call.h, call.saved("beta")), *_product(call, "batch1", "batch2", alpha))


@register("MvBackward0")
def mv(call: NodeCall):
    """z = A v: h_A = h_z v^2 (outer), h_v = (A^2)^T h_z."""
    h = call.h
    if h is None:
        return None, None
    matrix, vector = call.saved("self"), call.saved("vec")
    return (
        matmul.matrix_vector_matrix(h, vector) if call.needs(0) else None,
        matmul.matmul_right(h.unsqueeze(-1), matrix).squeeze(-1) if call.needs(1) else None,
    )


@register("DotBackward0")
def dot(call: NodeCall):
    """z = x . y: h_x = h_z y^2, h_y = h_z x^2."""
    h = call.h
    if h is None:
        return None, None
    return (
        arithmetic.product_factor(h, call.saved("tensor")) if call.needs(0) else None,
        arithmetic.product_factor(h, call.saved("self")) if call.needs(1) else None,
    )


# F.bilinear records torch._trilinear(x1, W, x2) with these expansions and summed dims.
BILINEAR_LAYOUT = {"expand1": (1, 3), "expand2": (0,), "expand3": (1, 2), "sumdim": (2, 3)}


def _bilinear_layout(node) -> str | None:
    if all(saved_value(node, k) == v for k, v in BILINEAR_LAYOUT.items()):
        return None
    return "torch._trilinear is supported in the layout F.bilinear / nn.Bilinear records"


@register("TrilinearBackward0", check=_bilinear_layout)
def bilinear(call: NodeCall):
    """nn.Bilinear, z_k = x1^T W_k x2 (rules.bilinear); each input enters linearly."""
    h = call.h
    if h is None:
        return None, None, None
    x1, weight, x2 = (call.saved(name) for name in ("i1", "i2", "i3"))
    return (
        bilinear_rules.bilinear_first_input(h, weight, x2) if call.needs(0) else None,
        bilinear_rules.bilinear_weight(h, x1, x2) if call.needs(1) else None,
        bilinear_rules.bilinear_second_input(h, weight, x1) if call.needs(2) else None,
    )
