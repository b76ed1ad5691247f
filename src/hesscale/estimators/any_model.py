"""Estimators for any ``nn.Module`` (no chain of modules, no BackPACK): the exact Hessian and
Gauss-Newton diagonals from autograd, the Monte-Carlo GGN diagonal, and HesScale / HesScaleGN
through ``hesscale.backward``.

The exact ones cost one Hessian-vector product per parameter entry (Hessian) or one
vector-Jacobian product per network output entry (GGN): meant for small networks, as
references.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

import hesscale
from hesscale.errors import HesScaleError
from hesscale.estimators.base import Estimator, check_samples, clean_gradients, trainable
from hesscale.hook_warning import hook_warning_hidden

CHUNK = 1024  # products per batched (vmapped) backward pass


def batched_grad(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor],
    vmap: bool = True,
) -> list[Tensor]:
    """The vector-Jacobian products sum_j v_j^T d outputs_j / d inputs_i for a batch of
    vectors: ``grad_outputs[j]`` has shape (n, *outputs[j].shape); returns one (n,
    *inputs[i].shape) tensor per input (zeros where an input is not reached). One vmapped
    backward pass (``is_grads_batched``), or a loop of n passes with ``vmap=False``. The graph
    is kept for further calls."""
    pairs = [(o, v) for o, v in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
    n = grad_outputs[0].shape[0]
    if not pairs:
        return [inp.new_zeros(n, *inp.shape) for inp in inputs]
    outs, vs = zip(*pairs, strict=True)
    if vmap:
        products = torch.autograd.grad(
            outs, inputs, vs, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
    else:
        rows = [
            torch.autograd.grad(outs, inputs, [v[i] for v in vs], True, allow_unused=True)
            for i in range(n)
        ]
        products = [None if row[0] is None else torch.stack(row) for row in zip(*rows, strict=True)]
    return [
        inp.new_zeros(n, *inp.shape) if p is None else p
        for inp, p in zip(inputs, products, strict=True)
    ]


class VmapFallback:
    """Calls ``batched_grad`` vmapped until an operation of the graph refuses vmap
    (RuntimeError); from then on, a loop of single products. A genuine error of the graph
    reappears in the loop."""

    def __init__(self) -> None:
        self.vmap = True

    def __call__(self, outputs, inputs, grad_outputs) -> list[Tensor]:
        if self.vmap:
            try:
                return batched_grad(outputs, inputs, grad_outputs, vmap=True)
            except RuntimeError:
                self.vmap = False
        return batched_grad(outputs, inputs, grad_outputs, vmap=False)


def one_hot_probes(sizes: list[int], start: int, stop: int, like: Tensor) -> list[Tensor]:
    """Unit vectors e_start, ..., e_{stop-1} of the concatenation of tensors of ``sizes``
    entries, split into one (stop - start, size) block per tensor."""
    probes = like.new_zeros(stop - start, sum(sizes))
    rows = torch.arange(stop - start, device=like.device)
    probes[rows, rows + start] = 1
    return list(probes.split(sizes, dim=1))


def hessian_diagonal(
    loss: Tensor,
    inputs: Sequence[Tensor],
    chunk: int = CHUNK,
    products: Callable[..., list[Tensor]] | None = None,
) -> list[Tensor]:
    """diag(d^2 loss / d inputs^2), exactly: the gradient with ``create_graph``, then the
    Hessian-vector product H e_i for every entry i (one-hot probes, ``chunk`` of them per
    batched backward pass), of which entry i is H_ii."""
    products = products or VmapFallback()
    inputs = list(inputs)
    grads = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]
    sizes = [x.numel() for x in inputs]
    total = sum(sizes)
    diagonal = loss.new_empty(total)
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        probes = one_hot_probes(sizes, start, stop, loss)
        probes = [v.reshape(-1, *x.shape) for v, x in zip(probes, inputs, strict=True)]
        hv = products(grads, inputs, probes)
        rows = torch.cat([h.reshape(stop - start, -1) for h in hv], dim=1)
        diagonal[start:stop] = rows.diagonal(offset=start)
    return [d.view_as(x).detach() for d, x in zip(diagonal.split(sizes), inputs, strict=True)]


def output_hessian(loss: Tensor, output: Tensor, products=None) -> Tensor:
    """The Hessian of ``loss`` w.r.t. ``output`` (all entries, batch included) as a symmetric
    (n, n) matrix, n = output.numel(): one Hessian-vector product per entry."""
    products = products or VmapFallback()
    (grad,) = torch.autograd.grad(loss, output, create_graph=True)
    n = output.numel()
    if not grad.requires_grad:  # the loss is linear in the output
        return output.new_zeros(n, n)
    probes = torch.eye(n, dtype=output.dtype, device=output.device).view(n, *output.shape)
    (rows,) = products([grad], [output], [probes])
    rows = rows.reshape(n, n).detach()
    return (rows + rows.T) / 2


def network_output(model: nn.Module, x: Tensor) -> Tensor:
    output = model(x)
    if not isinstance(output, Tensor):
        raise HesScaleError(
            f"{type(model).__name__} returned {type(output).__name__}; the GGN estimators need "
            "the network output as one tensor (the loss's first argument)."
        )
    return output


class ExactHessianAutograd(Estimator):
    """The exact Hessian diagonal of ``loss_fn(model(x), y)`` for any model, by autograd: one
    Hessian-vector product per parameter entry, ``chunk`` per batched backward pass
    (``is_grads_batched``; a loop where an operation does not support vmap)."""

    name = "Exact"

    def __init__(self, chunk: int = CHUNK) -> None:
        self.chunk = chunk
        self.products = VmapFallback()

    def estimate(self, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        params = trainable(model)
        with clean_gradients(params), hook_warning_hidden():
            loss = loss_fn(model(x), y)
            return hessian_diagonal(loss, params, self.chunk, self.products)


class ExactGGNAutograd(Estimator):
    """The exact diagonal of the generalised Gauss-Newton matrix J^T H J for any model, by
    autograd: J the Jacobian of the network output z = model(x) w.r.t. the parameters, H the
    Hessian of the loss w.r.t. z (whole output, batch included). With H = sum_c l_c u_c u_c^T
    (eigendecomposition), diag(J^T H J) = sum_c l_c (J^T u_c)^2: one vector-Jacobian product
    per output entry, batched."""

    name = "GGN"

    def __init__(self) -> None:
        self.products = VmapFallback()

    def estimate(self, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        params = trainable(model)
        with clean_gradients(params), hook_warning_hidden():
            output = network_output(model, x)
            logits = output.detach().requires_grad_(True)
            hessian = output_hessian(loss_fn(logits, y), logits, self.products)
            values, vectors = torch.linalg.eigh(hessian)
            directions = vectors.T.reshape(-1, *output.shape)  # row c: u_c
            jtu = self.products([output], params, [directions])
        return [torch.einsum("c,c...->...", values, j.square()).detach() for j in jtu]


def _mean_denominator(loss_fn: nn.Module, output: Tensor, y: Tensor) -> int:
    """The number of terms a ``reduction='mean'`` loss divides by (1 for 'sum')."""
    if loss_fn.reduction == "sum":
        return 1
    if isinstance(loss_fn, nn.MSELoss):
        return output.numel()
    return int((y != loss_fn.ignore_index).sum())


def _check_mc_loss(loss_fn: nn.Module, y: Tensor) -> None:
    supported = "nn.CrossEntropyLoss (class-index targets, no class weights or label smoothing) "
    supported += "or nn.MSELoss, with reduction 'mean' or 'sum'"
    if not isinstance(loss_fn, nn.CrossEntropyLoss | nn.MSELoss):
        raise HesScaleError(
            f"GGN-MC samples targets from the predictive distribution of {supported}; "
            f"got {type(loss_fn).__name__}."
        )
    if loss_fn.reduction not in ("mean", "sum"):
        raise HesScaleError(f"GGN-MC needs {supported}; got reduction={loss_fn.reduction!r}.")
    if isinstance(loss_fn, nn.CrossEntropyLoss) and (
        loss_fn.weight is not None or loss_fn.label_smoothing != 0 or y.is_floating_point()
    ):
        raise HesScaleError(
            f"GGN-MC needs {supported}; this CrossEntropyLoss has class weights, label "
            "smoothing or probability targets."
        )


def sampled_targets(
    loss_fn: nn.Module, output: Tensor, y: Tensor, generator: torch.Generator | None
) -> Tensor:
    """A target drawn from the model's predictive distribution: a class from softmax(output)
    (along dim 1; targets equal to ignore_index stay ignored) for cross-entropy; output + e/sqrt(2),
    e standard normal, for MSE (the Gaussian whose negative log-likelihood is (z - y)^2 up
    to constants)."""
    if isinstance(loss_fn, nn.MSELoss):
        noise = torch.randn(output.shape, generator=generator, dtype=output.dtype)
        return output + noise.to(output.device) / math.sqrt(2)
    probs = output.softmax(dim=0 if output.dim() == 1 else 1)
    flat = probs.movedim(1, -1).reshape(-1, probs.shape[1]) if probs.dim() > 1 else probs[None]
    classes = torch.multinomial(flat.cpu(), 1, generator=generator).to(output.device)
    classes = classes.view(y.shape)
    return torch.where(y == loss_fn.ignore_index, y, classes)


class MonteCarloGGNAutograd(Estimator):
    """The GGN diagonal with the loss Hessian replaced by ``samples`` Monte-Carlo samples, for
    any model: for each sample, a target drawn from the model's predictive distribution
    (``sampled_targets``) and s = sqrt(m) d loss_fn(z, target) / dz, where m is what a
    'mean' reduction divides by (1 for 'sum'), so that E[s s^T] is the loss Hessian H w.r.t.
    the output z; the estimate is the mean over samples of (J^T s)^2 (one vector-Jacobian
    product each), unbiased for diag(J^T H J). With one example (batch size 1) and m = 1, J^T s
    is the gradient of the loss at the sampled target."""

    stochastic = True

    def __init__(self, samples: int = 1, generator: torch.Generator | None = None) -> None:
        self.samples = check_samples(samples, "GGN-MC samples")
        self.generator = generator
        self.name = f"GGN-MC-{samples}"
        self.one_backprop = samples == 1
        self.products = VmapFallback()

    def output_samples(self, loss_fn: nn.Module, output: Tensor, y: Tensor) -> Tensor:
        """(samples, *output.shape): the vectors s, with E[s s^T] = d^2 loss / d output^2."""
        _check_mc_loss(loss_fn, y)
        scale = math.sqrt(_mean_denominator(loss_fn, output, y))
        logits = output.detach().requires_grad_(True)
        draws = []
        with torch.enable_grad():
            for _ in range(self.samples):
                target = sampled_targets(loss_fn, logits.detach(), y, self.generator)
                (grad,) = torch.autograd.grad(loss_fn(logits, target), logits)
                draws.append(scale * grad)
        return torch.stack(draws)

    def estimate(self, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        params = trainable(model)
        with clean_gradients(params), hook_warning_hidden():
            output = network_output(model, x)
            s = self.output_samples(loss_fn, output, y)
            if self.samples == 1:
                jts = batched_grad([output], params, [s], vmap=False)
            else:
                jts = self.products([output], params, [s])
        return [j.square().mean(0).detach() for j in jts]


class EngineHesScale(Estimator):
    """HesScale (``gauss_newton=True``: HesScaleGN) on any model, through
    ``hesscale.backward``."""

    one_backprop = True

    def __init__(self, gauss_newton: bool = False) -> None:
        self.gauss_newton = gauss_newton
        self.name = "HesScaleGN" if gauss_newton else "HesScale"
        self.field = "hesscale_gn" if gauss_newton else "hesscale"

    def estimate(self, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
        params = trainable(model)
        with clean_gradients(params, self.field):
            loss = loss_fn(model(x), y)
            hesscale.backward(loss, gn=self.gauss_newton, inputs=params)
            # a parameter the loss does not reach has a zero diagonal (and no result)
            return [
                getattr(p, self.field, None).detach().clone()
                if hasattr(p, self.field)
                else torch.zeros_like(p)
                for p in params
            ]


def any_model_estimators(samples: int = 10) -> list[Estimator]:
    """The study's methods that work on any nn.Module: exact Hessian and GGN, GGN-MC and
    Hutchinson with 1 and ``samples`` draws, squared gradient, HesScale, HesScaleGN, zero."""
    from hesscale.estimators.autograd_based import Hutchinson, SquaredGradient, Zero

    methods: list[Estimator] = [ExactHessianAutograd(), ExactGGNAutograd()]
    for draws in sorted({1, samples}):
        methods += [MonteCarloGGNAutograd(draws), Hutchinson(draws)]
    methods += [SquaredGradient(), EngineHesScale(), EngineHesScale(gauss_newton=True), Zero()]
    return methods


__all__ = [
    "EngineHesScale",
    "ExactGGNAutograd",
    "ExactHessianAutograd",
    "MonteCarloGGNAutograd",
    "any_model_estimators",
    "batched_grad",
    "hessian_diagonal",
    "output_hessian",
    "sampled_targets",
]
