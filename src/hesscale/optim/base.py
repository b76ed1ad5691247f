"""Plumbing shared by the optimizers: param groups, validation, closures, checks, the step loop.

The update itself lives in hesscale.optim.update; subclasses only say where the Hessian-diagonal
estimate comes from (``_diagonals``) and how a closure's loss is backpropagated (``_backward``).
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from backpack import backpack
from backpack.extensions.backprop_extension import BackpropExtension
from torch import Tensor

from hesscale.errors import HesScaleError
from hesscale.hook_warning import hook_warning_hidden
from hesscale.internals import multi_tensor, unscale_through
from hesscale.optim import update

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]
ON_NONFINITE = ("raise", "skip")


class NonFiniteError(HesScaleError, FloatingPointError):
    """A gradient or Hessian-diagonal estimate holds inf or NaN (see ``on_nonfinite``)."""


def _shape(p: Tensor) -> str:
    return str(tuple(p.shape))


def _by_device_and_dtype(tensors: list[Tensor]) -> list[list[Tensor]]:
    groups: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def _all_finite(tensors: list[Tensor]) -> bool:
    """Whether every entry of these tensors (one device and dtype) is finite."""
    tensors = [torch.view_as_real(t) if t.is_complex() else t for t in tensors]
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return True
    # the 2-norms are finite if every entry is (one cheap pass); an overflow of a large but
    # finite tensor's norm falls back to the exact check
    if bool(torch.isfinite(torch.stack(multi_tensor.norm(tensors, 2.0))).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        graph = "with" if value.grad_fn is not None else "without"
        return f"a tensor of shape {_shape(value)} {graph} a graph"
    return type(value).__name__


class DiagonalAdam(torch.optim.Optimizer):
    """Adam-style optimizer preconditioned by a Hessian-diagonal estimate (abstract).

    See hesscale.optim.update for the update. Options live in each param group, as in
    torch.optim: lr, betas, eps, weight_decay, maximize, preconditioner, hessian_power, delta,
    max_scale, clip, on_nonfinite, foreach.
    """

    method: BackpropExtension | None = None  # the BackPACK extension backward must run under
    create_graph: bool = False  # whether backward must run with create_graph=True
    # torch.amp.GradScaler passes itself to step() (see ``step``); whether the diagonal, like
    # the gradient, is multiplied by the loss scale (False where it is computed from the loss
    # function alone, as BackPACK's Monte-Carlo GGN is)
    _step_supports_amp_scaling = True
    diagonal_scales_with_loss = True

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        *,
        maximize: bool = False,
        preconditioner: str = "adam",
        hessian_power: float = 1.0,
        delta: float | None = None,
        max_scale: float = 1.0,
        clip: float | None = None,
        floor: float | None = None,
        on_nonfinite: str = "raise",
        foreach: bool | None = None,
        **extra: Any,
    ) -> None:
        """The one constructor of every optimizer here: each option becomes a param-group
        default (checked with every group added); ``extra`` holds a subclass's own options."""
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            preconditioner=preconditioner,
            hessian_power=hessian_power,
            delta=delta,
            max_scale=max_scale,
            clip=clip,
            floor=floor,
            on_nonfinite=on_nonfinite,
            foreach=foreach,
            **extra,
        )
        self._used: dict[int, weakref.ref] = {}
        super().__init__(params, defaults)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "method": self.method}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Also what ``load_state_dict`` ends with: groups saved before the options ``clip``,
        ``floor`` and ``foreach`` existed get the values that reproduce them (the paper's
        update: neither clip nor floor)."""
        super().__setstate__(state)
        self._used = {}
        for group in self.param_groups:
            for key, value in (("clip", None), ("floor", None), ("foreach", None)):
                group.setdefault(key, value)

    # validation ---------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _validate({**self.defaults, **param_group}, type(self).__name__)
        super().add_param_group(param_group)

    # the step ------------------------------------------------------------------------------

    @torch.no_grad()
    def step(
        self, closure: Callable[[], Tensor] | None = None, grad_scaler: Any = None
    ) -> Tensor | None:
        """One update. Without a closure, backward must have run already (see the class doc).

        With a closure: the optimizer sets every gradient to None, calls ``closure()`` under
        grad mode, and, if the closure did not run backward itself, runs the backward pass that
        this optimizer needs on the returned loss. Returns the closure's loss (or None).

        Mixed precision: ``scaler.step(opt)`` of a ``torch.amp.GradScaler`` passes the scaler
        as ``grad_scaler``. The step then unscales the gradients (unless ``scaler.unscale_(opt)``
        already did) and the diagonals, which a scaled loss scales alike, and is skipped when
        the scaler found inf or NaN gradients, as torch's optimizers are.
        """
        self._closure_ran_backward = False
        loss = self._run_closure(closure) if closure is not None else None
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return loss
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients.")
        diagonals = dict(zip(map(id, params), self._diagonals(params), strict=True))
        if grad_scaler is not None:
            inv_scale, found_inf = unscale_through(grad_scaler, self)
            if found_inf.item():
                return loss  # skipped; the scaler lowers its scale in update()
            if self.diagonal_scales_with_loss:
                diagonals = {key: h * inv_scale.to(h.dtype) for key, h in diagonals.items()}
        if not self._all_finite(params, diagonals):
            return loss
        for group in self.param_groups:
            self._update_group(group, diagonals)
        return loss

    def _update_group(self, group: dict[str, Any], diagonals: dict[int, Tensor]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        update.group_step(
            params,
            multi_tensor.neg(grads) if group["maximize"] else grads,
            [diagonals[id(p)] for p in params],
            [self.state[p] for p in params],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            preconditioner=group["preconditioner"],
            power=group["hessian_power"],
            delta=group["delta"],
            max_scale=group["max_scale"],
            clip=group["clip"],
            floor=group["floor"],
            foreach=group["foreach"],
        )

    def _all_finite(self, params: list[Tensor], diagonals: dict[int, Tensor]) -> bool:
        """True if every gradient and diagonal is finite; else raise or warn and skip.

        One device sync per device and dtype: the largest |entry| of every tensor at once
        (``multi_tensor.norm`` with ord=inf; inf or NaN exactly when the tensor holds one)."""
        tensors = [p.grad for p in params] + [diagonals[id(p)] for p in params]
        if all(_all_finite(same) for same in _by_device_and_dtype(tensors)):
            return True
        name = type(self).__name__
        p, what = next(
            (p, what)
            for p in params
            for what, t in (("gradient", p.grad), ("Hessian-diagonal estimate", diagonals[id(p)]))
            if not bool(torch.isfinite(t).all())
        )
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        message = (
            f"{name}.step(): the {what} of a parameter of shape {_shape(p)} holds inf or NaN "
            "(diverging training, or a loss/model producing non-finite values)."
        )
        if group["on_nonfinite"] == "raise":
            raise NonFiniteError(
                message + " Lower lr, raise eps, or pass on_nonfinite='skip' to skip such steps."
            )
        warnings.warn(message + " Skipping this step (on_nonfinite='skip').", stacklevel=3)
        return False

    def _run_closure(self, closure: Callable[[], Tensor]) -> Tensor:
        self.zero_grad(set_to_none=True)
        self._closure_ran_backward = False
        with torch.enable_grad():
            loss = closure()
        if any(p.grad is not None for g in self.param_groups for p in g["params"]):
            self._closure_ran_backward = True
            return loss  # the closure ran backward itself
        if not isinstance(loss, Tensor) or loss.numel() != 1 or loss.grad_fn is None:
            raise ValueError(
                f"{type(self).__name__}.step(closure): the closure must return the loss, a "
                "one-element tensor attached to the graph of the parameters (got "
                f"{_describe(loss)})."
            )
        with torch.enable_grad(), hook_warning_hidden():  # the model may be BackPACK-extended
            self._backward(loss)
        return loss

    # what subclasses provide ---------------------------------------------------------------

    def _backward(self, loss: Tensor) -> None:
        """Backpropagate a closure's loss so that ``_diagonals`` finds what it needs."""
        raise NotImplementedError

    def _diagonals(self, params: list[Tensor]) -> list[Tensor]:
        """The Hessian-diagonal estimate of each parameter (all have a gradient)."""
        raise NotImplementedError


class _FromVariant:
    """The default of an option that the ``variant`` sets."""

    def __repr__(self) -> str:
        return "<set by variant>"


FROM_VARIANT = _FromVariant()
# the named variants of AdaHesScale(GN): the options each sets unless given explicitly
VARIANTS: dict[str, dict[str, Any]] = {
    "floored": {"clip": None, "floor": 1.0},  # the default: steps of at most Adam's
    "clipped": {"clip": 1.0, "floor": None},  # per-coordinate steps of at most lr
    "paper": {"clip": None, "floor": None},  # the published AdaHesScale (arXiv:2210.11639)
}


class ExtensionAdam(DiagonalAdam):
    """DiagonalAdam reading the diagonal left in ``p.<savefield>`` by a backward pass.

    ``self.method`` is the BackPACK extension that computes it for extended models (from
    ``_make_method``); subclasses may compute it otherwise in ``_backward`` (AdaHesScale:
    ``hesscale.backward``). ``zero_grad()`` clears the diagonals with the gradients. The
    arguments are AdaHesScale's (see its docstring).
    """

    savefield: str
    how_to_backward = (
        "Run the backward pass under the optimizer's extension, `with backpack(opt.method): "
        "loss.backward()` (after backpack.extend(model) and extend(loss_fn)), before every "
        "step(), or call opt.step(closure) with a closure that returns the loss."
    )

    def __init__(
        self,
        params: ParamsT,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        preconditioner: str = "adam",
        delta: float | None = None,
        max_scale: float = 1.0,
        clip: float | None | _FromVariant = FROM_VARIANT,
        floor: float | None | _FromVariant = FROM_VARIANT,
        variant: str = "floored",
        on_nonfinite: str = "raise",
        foreach: bool | None = None,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(
                f"{type(self).__name__}: invalid variant={variant!r}; supported: "
                f"{', '.join(map(repr, VARIANTS))}."
            )
        self.method = self._make_method()
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            maximize=maximize,
            preconditioner=preconditioner,
            delta=delta,
            max_scale=max_scale,
            clip=VARIANTS[variant]["clip"] if clip is FROM_VARIANT else clip,
            floor=VARIANTS[variant]["floor"] if floor is FROM_VARIANT else floor,
            on_nonfinite=on_nonfinite,
            foreach=foreach,
            variant=variant,
        )

    def _make_method(self) -> BackpropExtension:
        """The BackPACK extension whose ``savefield`` this optimizer reads."""
        raise NotImplementedError

    def _backward(self, loss: Tensor) -> None:
        with backpack(self.method):
            loss.backward()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients (as torch.optim does) and drop the diagonals with them."""
        super().zero_grad(set_to_none=set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                if hasattr(p, self.savefield):
                    delattr(p, self.savefield)

    def _diagonals(self, params: list[Tensor]) -> list[Tensor]:
        name, field, how = type(self).__name__, self.savefield, self.how_to_backward
        if getattr(self, "_closure_ran_backward", False):
            how = (
                "the closure ran the backward pass itself (e.g. loss.backward()), which "
                "computes gradients only. Let the closure return the loss without calling "
                "backward (step() then runs the backward pass this optimizer needs), or call "
                "hesscale.backward(loss) in it instead of loss.backward()."
            )
        diagonals = []
        for p in params:
            h = getattr(p, field, None)
            if h is None:
                raise HesScaleError(
                    f"{name}.step(): a parameter of shape {_shape(p)} has a gradient but no "
                    f"'{field}'; {how}"
                )
            if h.shape != p.shape:
                raise HesScaleError(
                    f"{name}.step(): '{field}' of a parameter of shape {_shape(p)} has shape "
                    f"{_shape(h)}."
                )
            used = self._used.get(id(p))
            if used is not None and used() is h:
                raise HesScaleError(
                    f"{name}.step(): the '{field}' of a parameter of shape {_shape(p)} was already "
                    f"used by an earlier step() (backward ran without the extension?). {how}"
                )
            self._used[id(p)] = weakref.ref(h)
            diagonals.append(h)
        return diagonals


def _validate(group: dict[str, Any], name: str) -> None:
    """Raise ValueError naming the first invalid hyperparameter of ``group``."""

    def bad(key: str, rule: str) -> ValueError:
        return ValueError(f"{name}: invalid {key}={group[key]!r}; {rule}.")

    def number(key: str) -> bool:
        value = group[key]
        if isinstance(value, Tensor):
            value = value.item() if value.numel() == 1 else math.nan
        return isinstance(value, int | float) and math.isfinite(value)

    if not number("lr") or group["lr"] < 0:
        raise bad("lr", "need a finite lr >= 0")
    betas = group["betas"]
    if (
        not isinstance(betas, tuple | list)
        or len(betas) != 2
        or not all(isinstance(b, int | float) and 0 <= b < 1 for b in betas)
    ):
        raise bad("betas", "need two numbers in [0, 1)")
    if not number("eps") or group["eps"] < 0:
        raise bad("eps", "need eps >= 0")
    if not number("weight_decay") or group["weight_decay"] < 0:
        raise bad("weight_decay", "need weight_decay >= 0")
    if group["preconditioner"] not in update.PRECONDITIONERS:
        raise bad("preconditioner", f"supported: {', '.join(update.PRECONDITIONERS)}")
    if not number("hessian_power") or not 0 <= group["hessian_power"] <= 1:
        raise bad("hessian_power", "need 0 <= hessian_power <= 1")
    if group["delta"] is not None and (not number("delta") or group["delta"] <= 0):
        raise bad("delta", "need delta > 0, or None for no trust region")
    if not number("max_scale") or group["max_scale"] <= 0:
        raise bad("max_scale", "need max_scale > 0")
    if group["clip"] is not None and (not number("clip") or group["clip"] <= 0):
        raise bad("clip", "need clip > 0, or None for no clipping")
    if group["floor"] is not None and (not number("floor") or group["floor"] <= 0):
        raise bad("floor", "need floor > 0, or None for no floor")
    if group["foreach"] not in (None, True, False):
        raise bad("foreach", "need True, False or None (the default: True)")
    if group["on_nonfinite"] not in ON_NONFINITE:
        raise bad("on_nonfinite", f"supported: {', '.join(map(repr, ON_NONFINITE))}")
    if not isinstance(group["maximize"], bool):
        raise bad("maximize", "need True or False")
