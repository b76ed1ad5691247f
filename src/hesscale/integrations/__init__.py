"""Thin adaptors to the libraries that consume Hessian diagonals.

- ``hesscale.diagonal`` (``hesscale.integrations.dataset``): the diagonal over a whole data set,
  the entry the adaptors share.
- ``hesscale.integrations.laplace``: curvature backends for laplace-torch (extra ``laplace``).
- ``hesscale.integrations.pruning``: Optimal Brain Damage saliencies for
  ``torch.nn.utils.prune`` and Torch-Pruning (extra ``pruning``).
- ``hesscale.integrations.continual``: EWC with HesScaleGN importances (extra ``continual``);
  UPGD is ``hesscale.optim.UPGD``.
- ``hesscale.integrations.interop``: the diagonal in the form optimizers that accept a Hessian
  expect (pytorch_optimizer's SophiaH / AdaHessian, extra ``interop``).

Each adaptor module imports its library only when used.
"""
