"""``hesscale.diagonal``: the HesScale diagonal of a loss summed over a whole data set."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from hesscale import accumulation
from hesscale.engine.backward import backward

VARIANTS = ("hesscale", "hesscale_gn")
# losses whose per-batch average is not a term of the data set's sum
AVERAGING_REDUCTIONS = ("mean", "batchmean")


def diagonal(
    model: nn.Module,
    data: Iterable,
    loss_fn: Callable[[Any, Any], Tensor],
    gn: bool = True,
    progress: bool = True,
) -> dict[str, Tensor]:
    """The diagonal of the Hessian (``gn=False``: HesScale) or of the Gauss-Newton matrix
    (``gn=True``: HesScaleGN) of L = sum over the batches (x, y) of ``data`` of
    ``loss_fn(model(x), y)``, w.r.t. every parameter of ``model`` that requires grad.

    Each batch gets its own ``hesscale.backward`` pass and the diagonals are summed, so the
    result is exactly what one pass over the union of the batches would give (no
    squared-mean-gradient shortcut). With a sum-reduced loss (``reduction="sum"``) L is the
    whole data set's loss, as a Laplace approximation or EWC wants. A loss module with
    ``reduction="mean"`` is refused: its per-batch averages are not terms of the data set's
    sum (and a short last batch would weigh more). To get the average over N examples, divide
    the result by N; to really sum per-batch means, pass a function (``lambda f, y:
    F.cross_entropy(f, y)``), which is taken as written.

    The model runs in the mode it is in (call ``model.eval()`` first for dropout or batch norm
    in evaluation mode), on the device of its parameters; tensors in each batch are moved there.
    The model's ``p.grad``, ``p.hesscale`` and ``p.hesscale_gn`` are left exactly as they were.

    Args:
        model: any model ``hesscale.backward`` supports.
        data: an iterable of ``(x, y)`` pairs, e.g. a DataLoader or a list of tensor pairs.
        loss_fn: ``loss_fn(model(x), y)`` -> a scalar tensor.
        gn: True for HesScaleGN, False for HesScale.
        progress: show a tqdm progress bar (if tqdm is installed).

    Returns:
        parameter name (as in ``model.named_parameters()``) -> its diagonal, same shape, dtype
        and device as the parameter.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"hesscale.diagonal: model must be a torch.nn.Module, not {type(model)}.")
    if gn not in (True, False):
        raise ValueError(f"hesscale.diagonal: gn={gn!r}; use True (HesScaleGN) or False.")
    _check_loss_fn(loss_fn)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("hesscale.diagonal: the model has no parameter that requires grad.")
    params = [p for _, p in named]
    device = params[0].device
    totals = [torch.zeros_like(p) for p in params]
    n_batches = 0
    for batch in _progress(data, progress):
        x, y = _unpack(batch, n_batches)
        with torch.enable_grad():
            loss = loss_fn(model(_to(x, device)), _to(y, device))
        _check_loss(loss, n_batches)
        for total, h in zip(totals, loss_diagonal(loss, params, gn), strict=True):
            total += h
        n_batches += 1
    if n_batches == 0:
        raise ValueError("hesscale.diagonal: data yielded no batch.")
    return {name: total for (name, _), total in zip(named, totals, strict=True)}


def loss_diagonal(loss: Tensor, params: Sequence[Tensor], gn: bool) -> list[Tensor]:
    """The diagonal of one scalar ``loss`` w.r.t. ``params`` (zeros for a parameter the loss
    does not reach), leaving each parameter's ``grad``, ``hesscale`` and ``hesscale_gn`` as
    they were."""
    variant = VARIANTS[bool(gn)]
    with _state_kept(params):
        backward(loss, gn=bool(gn), inputs=list(params))
        return [
            torch.zeros_like(p) if getattr(p, variant, None) is None else getattr(p, variant)
            for p in params
        ]


@contextmanager
def _state_kept(params: Sequence[Tensor]):
    """Clears grad and diagonals of ``params`` for the block, and puts the same tensors back
    afterwards (the same objects, so that later passes accumulate into them as before)."""
    saved = [
        (p.grad, {v: p.__dict__.get(v) for v in VARIANTS}, accumulation.saved(p)) for p in params
    ]
    try:
        for p in params:
            p.grad = None
            for v in VARIANTS:
                p.__dict__.pop(v, None)
        yield
    finally:
        for p, (grad, diagonals, record) in zip(params, saved, strict=True):
            p.grad = grad
            accumulation.restore(p, record)
            for v, value in diagonals.items():
                if value is None:
                    p.__dict__.pop(v, None)
                else:
                    setattr(p, v, value)


def _check_loss_fn(loss_fn: object) -> None:
    if not callable(loss_fn):
        raise TypeError(f"hesscale.diagonal: loss_fn must be callable, not {type(loss_fn)}.")
    reduction = getattr(loss_fn, "reduction", None)
    if isinstance(loss_fn, nn.Module) and reduction in AVERAGING_REDUCTIONS:
        raise ValueError(
            f"hesscale.diagonal: loss_fn {type(loss_fn).__name__} has reduction={reduction!r}; "
            "the data set's diagonal needs the sum over its examples: use reduction='sum' "
            "(and divide the result by the number of examples for the average)."
        )
    if isinstance(loss_fn, nn.Module) and reduction == "none":
        raise ValueError(
            f"hesscale.diagonal: loss_fn {type(loss_fn).__name__} has reduction='none'; it "
            "must return a scalar: use reduction='sum'."
        )


def _check_loss(loss: object, index: int) -> None:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"hesscale.diagonal: loss_fn(model(x), y) of batch {index} gave {shape}; it must "
            "return a scalar tensor (a sum-reduced loss)."
        )


def _unpack(batch: object, index: int) -> tuple[Any, Any]:
    if isinstance(batch, list | tuple) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(
        f"hesscale.diagonal: batch {index} of data is {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, list | tuple) else "")
        + "; data must yield (x, y) pairs."
    )


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, Tensor) else value


def _progress(data: Iterable, progress: bool) -> Iterable:
    if not progress:
        return data
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn(
            "hesscale.diagonal: progress=True needs tqdm; running without a bar.", stacklevel=3
        )
        return data
    total = len(data) if hasattr(data, "__len__") else None
    return tqdm(data, total=total, desc="hesscale.diagonal", unit="batch")
