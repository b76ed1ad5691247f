"""Complex tensors as pairs of real numbers: torch.view_as_complex, products, views and
torch.view_as_real (rotary embeddings written with complex numbers, as in Meta's LLaMA code).

The definition: each complex entry is two real entries, and a complex product is the real
operations it stands for (Re z = Re x Re y - Im x Im y, Im z = Re x Im y + Im x Re y). So the
graph oracle, run on the same computation written with real tensors only, gives the diagonals
that hesscale.backward must give on the complex version. Everything else that produces or
reads a complex tensor is refused before anything is computed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hesscale
from hesscale.errors import UnsupportedOperationError
from tests.engine_oracle import GraphOracle
from tests.oracle import assert_close


def r(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def pairs(t):
    """(..., 2k) -> the real and imaginary parts (..., k) of its consecutive pairs."""
    p = t.reshape(*t.shape[:-1], -1, 2)
    return p[..., 0], p[..., 1]


def interleave(real, imag):
    return torch.stack([real, imag], -1).flatten(-2)


def as_complex(t):
    return torch.view_as_complex(t.reshape(*t.shape[:-1], -1, 2))


def as_real(z):
    return torch.view_as_real(z).flatten(-2)


# Each case: (the computation with complex tensors, the same with real tensors only), from
# (weight, bias, other weight, inputs, constant rotation (cos, sin)) to the network output.
def rotary(complex_numbers):
    def network(weight, bias, other, x, cos, sin):
        q = torch.tanh(x @ weight.T + bias)
        if complex_numbers:
            return as_real(as_complex(q) * torch.complex(cos, sin))
        a, b = pairs(q)
        return interleave(a * cos - b * sin, a * sin + b * cos)

    return network


def product_of_two(complex_numbers):
    """Both factors depend on the parameters (complex x complex)."""

    def network(weight, bias, other, x, cos, sin):
        q, k = torch.tanh(x @ weight.T + bias), x @ other.T
        if complex_numbers:
            return as_real(as_complex(q) * as_complex(k))
        a, b = pairs(q)
        c, d = pairs(k)
        return interleave(a * c - b * d, a * d + b * c)

    return network


def real_times_complex(complex_numbers):
    """A real factor that depends on the parameters times a complex one (real x complex)."""

    def network(weight, bias, other, x, cos, sin):
        q, scale = x @ weight.T + bias, torch.sigmoid(x @ other.T)
        half = scale[..., : scale.shape[-1] // 2]
        if complex_numbers:
            return as_real(half * as_complex(torch.tanh(q)))
        a, b = pairs(torch.tanh(q))
        return interleave(half * a, half * b)

    return network


CASES = {"rotary": rotary, "complex-times-complex": product_of_two,
         "real-times-complex": real_times_complex}  # fmt: skip


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
def test_complex_graph_equals_its_real_form(make):
    weight, bias, other = r(8, 5, seed=0), r(8, seed=1), r(8, 5, seed=2)
    x, labels = r(3, 4, 5, seed=3), torch.tensor([0, 3, 5, 7, 1, 2, 6, 4, 4, 0, 1, 3])
    angles = r(4, 4, seed=5)
    cos, sin = angles.cos(), angles.sin()

    def loss_of(network, params):
        # (cross-entropy: a diagonal that differs between the real and imaginary parts)
        out = network(*params, x, cos, sin)
        return F.cross_entropy(out.flatten(0, 1), labels), out

    params = [t.clone().requires_grad_(True) for t in (weight, bias, other)]
    loss, _ = loss_of(make(True), params)
    assert "ViewAsComplexBackward0" in hesscale.engine.graph.operation_names(loss)
    hesscale.backward(loss, gn="both")

    oracle = GraphOracle(lambda w, b, o: loss_of(make(False), [w, b, o]), [weight, bias, other])
    for gn, field in ((False, "hesscale"), (True, "hesscale_gn")):
        expected, gradients = oracle.diagonals(gn=gn)
        for p, want, grad in zip(params, expected, gradients, strict=True):
            if p.grad is None:  # (a parameter the case does not use)
                assert not grad.any()
                continue
            torch.testing.assert_close(p.grad, grad, rtol=1e-10, atol=1e-12)
            assert_close(getattr(p, field), want)


@pytest.mark.parametrize(
    "operation, node",
    [
        (lambda z: z.abs(), "AbsBackward0"),  # reads a complex tensor, gives a real one
        (lambda z: as_real(z.exp()), "ExpBackward0"),  # gives a complex tensor
        (lambda z: as_real(z + z), "AddBackward0"),
    ],
    ids=["abs", "exp", "add"],
)
def test_other_complex_operations_are_refused_up_front(operation, node):
    weight = r(4, 4, seed=0).requires_grad_(True)
    z = as_complex(torch.ones(2, 4, dtype=torch.float64) @ weight)
    with pytest.raises(UnsupportedOperationError, match=f"complex tensors.*{node}"):
        hesscale.backward(operation(z).sum())
    assert weight.grad is None


def test_llama_style_attention_with_complex_rotary_embeddings():
    """A LLaMA-style block (RMSNorm, rotary embeddings with complex numbers, causal attention,
    SwiGLU): hesscale.backward gives autograd's gradients and, in both variants, the same
    diagonals as the same block with rotary embeddings written with real tensors."""
    torch.manual_seed(0)
    dim, heads, length = 8, 2, 5
    head_dim = dim // heads
    angles = torch.outer(torch.arange(length, dtype=torch.float64),
                         torch.rand(head_dim // 2, dtype=torch.float64))  # fmt: skip
    cos, sin = angles.cos(), angles.sin()
    params = {
        name: torch.randn(*shape, dtype=torch.float64) * 0.5
        for name, shape in {"norm": (dim,), "qkv": (3 * dim, dim), "out": (dim, dim),
                            "up": (2 * 16, dim), "down": (dim, 16), "head": (7, dim)}.items()
    }  # fmt: skip

    def rotate(t, complex_numbers):  # t: (batch, heads, length, head_dim)
        if complex_numbers:
            return as_real(as_complex(t) * torch.complex(cos, sin))
        a, b = pairs(t)
        return interleave(a * cos - b * sin, a * sin + b * cos)

    def block(p, x, complex_numbers):
        h = F.rms_norm(x, (dim,), p["norm"])
        q, k, v = (h @ p["qkv"].T).split(dim, -1)
        q, k, v = (t.view(*x.shape[:2], heads, head_dim).transpose(1, 2) for t in (q, k, v))
        q, k = rotate(q, complex_numbers), rotate(k, complex_numbers)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + attended.transpose(1, 2).reshape(x.shape) @ p["out"].T
        gate, up = (x @ p["up"].T).chunk(2, -1)
        x = x + (F.silu(gate) * up) @ p["down"].T
        return x @ p["head"].T

    x, labels = torch.randn(2, length, dim, dtype=torch.float64), torch.randint(0, 7, (2 * length,))
    results = []
    for complex_numbers in (True, False):
        leaves = {n: t.clone().requires_grad_(True) for n, t in params.items()}
        loss = F.cross_entropy(block(leaves, x, complex_numbers).flatten(0, 1), labels)
        names = hesscale.engine.graph.operation_names(loss)
        assert ("ViewAsComplexBackward0" in names) == complex_numbers
        hesscale.backward(loss, gn="both")
        results.append(leaves)
    for name in params:
        got, want = results[0][name], results[1][name]
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-12)
        for field in ("hesscale", "hesscale_gn"):
            assert_close(getattr(got, field), getattr(want, field))
        assert (got.hesscale_gn >= 0).all()
