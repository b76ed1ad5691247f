"""Optimal Brain Damage saliencies from HesScale diagonals, for pruning.

OBD (LeCun, Denker and Solla, 1989) ranks a weight w by the loss increase its removal causes in
a quadratic model of the loss around a minimum with a diagonal Hessian: s = 1/2 h w^2, h the
weight's Hessian diagonal entry. Here h is the data set's HesScaleGN (``gn=True``, never
negative) or HesScale (``gn=False``) diagonal from ``hesscale.diagonal``.

- Unstructured: ``importance_scores`` for ``torch.nn.utils.prune.global_unstructured``.
- Structured (channels): ``OBDImportance``, an importance for Torch-Pruning
  (``pip install hesscale[pruning]``): a channel's saliency is the sum of its weights'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hesscale.integrations.dataset import diagonal

__all__ = ["obd_saliency", "importance_scores", "OBDImportance"]


def obd_saliency(
    model: nn.Module,
    data: Iterable,
    loss_fn: Callable[[Any, Any], Tensor],
    gn: bool = True,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Parameter name -> 1/2 h w^2, with h the data set's diagonal (``hesscale.diagonal``,
    same arguments). For a pruned parameter (``torch.nn.utils.prune``'s ``name_orig``) w is
    the masked weight the model uses, and the name is the one without ``_orig``."""
    diagonals = diagonal(model, data, loss_fn, gn=gn, progress=progress)
    saliencies = {}
    for name, h in diagonals.items():
        module_name, _, attribute = name.rpartition(".")
        module = model.get_submodule(module_name)
        if attribute.endswith("_orig") and hasattr(module, attribute[: -len("_orig")] + "_mask"):
            attribute = attribute[: -len("_orig")]
            name = f"{module_name}.{attribute}" if module_name else attribute
        weight = getattr(module, attribute).detach()
        saliencies[name] = 0.5 * h * weight.square()
    return saliencies


def importance_scores(
    model: nn.Module,
    parameters: Sequence[tuple[nn.Module, str]],
    data: Iterable,
    loss_fn: Callable[[Any, Any], Tensor],
    gn: bool = True,
    progress: bool = False,
) -> dict[tuple[nn.Module, str], Tensor]:
    """OBD saliencies keyed as ``torch.nn.utils.prune.global_unstructured`` wants them::

        params = [(model[0], "weight"), (model[2], "weight")]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.5,
                                  importance_scores=importance_scores(model, params, data,
                                                                      loss_fn))

    L1Unstructured ranks by magnitude; HesScaleGN's saliencies are never negative, HesScale's
    (``gn=False``) can be, where the Hessian diagonal is, and are then ranked by their size.
    """
    saliencies = obd_saliency(model, data, loss_fn, gn=gn, progress=progress)
    names = {id(module): name for name, module in model.named_modules()}
    scores = {}
    for module, attribute in parameters:
        if id(module) not in names:
            raise ValueError(f"importance_scores: {type(module).__name__} is not in the model.")
        prefix = names[id(module)]
        key = f"{prefix}.{attribute}" if prefix else attribute
        if key not in saliencies:
            raise ValueError(
                f"importance_scores: {key} is not a parameter of the model that requires grad."
            )
        scores[(module, attribute)] = saliencies[key]
    return scores


def _channel_sum(saliency: Tensor, dim: int) -> Tensor:
    """Sum over every dimension but ``dim``."""
    return saliency.transpose(0, dim).flatten(1).sum(1)


def _grouped_column_sum(saliency: Tensor, groups: int) -> Tensor:
    """Per channel of dimension 1 of a grouped weight of shape (A, B, ...), B channels per
    group: channel j of group g owns the entries [g * A/groups : (g+1) * A/groups, j], so the
    result has groups * B entries, group by group (the layer's channel order)."""
    a, b = saliency.shape[:2]
    return saliency.reshape(groups, a // groups, b, -1).sum((1, 3)).flatten()


class OBDImportance:
    """Torch-Pruning importance: a channel's OBD saliency, the sum of 1/2 h w^2 over the weights
    the channel removes (out channels: its filter; in channels: its column), with h from
    ``hesscale.diagonal(model, data, loss_fn, gn)``; the group's saliencies are combined with
    Torch-Pruning's ``group_reduction`` and ``normalizer``::

        importance = OBDImportance(model, data, loss_fn)
        pruner = tp.pruner.BasePruner(model, example_inputs, importance, pruning_ratio=0.5)
        pruner.step()

    The diagonals are computed on first use and again whenever the pruner has replaced a
    parameter (each step of an iterative pruning, on the pruned model).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Iterable,
        loss_fn: Callable[[Any, Any], Tensor],
        gn: bool = True,
        group_reduction: str = "mean",
        normalizer: str | None = "mean",
        bias: bool = False,
    ) -> None:
        import torch_pruning as tp

        if group_reduction not in REDUCTIONS:
            raise ValueError(
                f"OBDImportance: group_reduction={group_reduction!r}; use one of {REDUCTIONS}."
            )
        if normalizer not in NORMALIZERS:
            raise ValueError(f"OBDImportance: normalizer={normalizer!r}; use one of {NORMALIZERS}.")
        self.model, self.data, self.loss_fn, self.gn = model, data, loss_fn, gn
        self.group_reduction, self.normalizer, self.bias = group_reduction, normalizer, bias
        fn = tp.pruner.function
        self._out = (fn.prune_conv_out_channels, fn.prune_linear_out_channels)
        self._in = (fn.prune_conv_in_channels, fn.prune_linear_in_channels)
        self._affine = (fn.prune_batchnorm_out_channels, fn.prune_layernorm_out_channels)
        self._saliency: dict[int, Tensor] = {}

    def _saliency_of(self, param: Tensor) -> Tensor:
        cached = self._saliency.get(id(param))
        if cached is None or cached.shape != param.shape:
            named = dict(self.model.named_parameters())
            saliencies = obd_saliency(self.model, self.data, self.loss_fn, self.gn)
            self._saliency = {id(named[n]): s for n, s in saliencies.items() if n in named}
            cached = self._saliency[id(param)]
        return cached

    def _local(self, layer: nn.Module, prune_fn: Callable, idxs: list[int]) -> list[Tensor]:
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, Tensor) or not weight.requires_grad:
            return []
        s = self._saliency_of(weight)
        if prune_fn in self._out or prune_fn in self._in:
            # conv weights are (out, in / groups, ...), transposed ones (in, out / groups, ...)
            first_dim = (prune_fn in self._out) != bool(getattr(layer, "transposed", False))
            if first_dim:
                per_channel = _channel_sum(s, 0)
            else:
                per_channel = _grouped_column_sum(s, getattr(layer, "groups", 1))
            local = [per_channel[idxs]]
            if prune_fn in self._in:
                return local
        elif prune_fn in self._affine:
            local = [s[idxs]]
        else:
            return []
        bias = getattr(layer, "bias", None)
        if self.bias and isinstance(bias, Tensor) and bias.requires_grad:
            local.append(self._saliency_of(bias)[idxs])
        return local

    @torch.no_grad()
    def __call__(self, group: Any) -> Tensor | None:
        """One saliency per channel of the group's root (None for a group without weights)."""
        saliencies, root_indices = [], []
        for i, (dep, idxs) in enumerate(group):
            for local in self._local(dep.layer, dep.pruning_fn, list(idxs)):
                saliencies.append(local)
                root_indices.append(group[i].root_idxs)
        if not saliencies:
            return None
        return _normalized(
            _reduced(saliencies, root_indices, self.group_reduction), self.normalizer
        )


REDUCTIONS = ("mean", "sum", "max")
NORMALIZERS = (None, "mean", "sum", "max")


def _reduced(saliencies: list[Tensor], root_indices: list[list[int]], how: str) -> Tensor:
    """Combine what the group's layers give each root channel. A layer first sums its entries
    that map to the same root channel (e.g. the columns a flatten spreads one channel over);
    then the layers' values are summed, averaged over the layers that have the channel, or
    their maximum taken."""
    n = max(max(idx) for idx in root_indices) + 1
    per_layer, has = [], []
    for s, idx in zip(saliencies, root_indices, strict=True):
        index = torch.as_tensor(idx, device=s.device)
        per_layer.append(s.new_zeros(n).index_add_(0, index, s))
        has.append(s.new_zeros(n).index_add_(0, index, torch.ones_like(s)) > 0)
    values, present = torch.stack(per_layer), torch.stack(has)
    if how == "max":
        return values.masked_fill(~present, float("-inf")).amax(0)
    total = values.sum(0)
    return total / present.sum(0).clamp_min(1) if how == "mean" else total


def _normalized(s: Tensor, how: str | None) -> Tensor:
    if how is None:
        return s
    scale = {"mean": s.mean(), "sum": s.sum(), "max": s.max()}[how]
    return s / scale
