"""Per-operation engine rules for embedding lookups and dropout's fused kernel against the
brute-force definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.engine_checks import check_op


def r(*shape):
    return torch.randn(*shape, dtype=torch.float64)


INDICES = torch.tensor([[1, 4, 1], [0, 4, 4]])  # repeated indices, an unused row


def native_dropout(p):
    """torch.native_dropout with the same mask at every call (the oracle calls it repeatedly)."""

    def fn(x):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return torch.native_dropout(x, p, True)[0]

    return fn


BAG_INDICES = torch.tensor([1, 4, 1, 1, 0, 5, 2, 4])  # a row repeated within a bag
OFFSETS = torch.tensor([0, 3, 3, 6])  # an empty bag


def bag(**kwargs):
    return lambda w, *sample: F.embedding_bag(
        BAG_INDICES, w, OFFSETS, per_sample_weights=sample[0] if sample else None, **kwargs
    )


def embedding_bag_cases():
    for mode in ("sum", "mean", "max"):
        yield f"bag-{mode}", bag(mode=mode), (r(6, 3),), None
        yield f"bag-{mode}-padding", bag(mode=mode, padding_idx=1), (r(6, 3),), None
        yield (
            f"bag-{mode}-last-offset",
            lambda w, m=mode: F.embedding_bag(
                BAG_INDICES, w, torch.tensor([0, 3, 3, 8]), mode=m, include_last_offset=True
            ),
            (r(6, 3),),
            None,
        )
    yield "bag-2d-mean", lambda w: F.embedding_bag(BAG_INDICES.view(2, 4), w), (r(6, 3),), None
    yield "bag-sample-weights", bag(mode="sum"), (r(6, 3), r(8)), None
    yield "bag-sample-weights-padding", bag(mode="sum", padding_idx=4), (r(6, 3), r(8)), None
    yield "bag-sample-weights-only", bag(mode="sum"), (r(6, 3), r(8)), (False, True)
    yield "bag-max-ties", bag(mode="max"), (torch.ones(6, 3, dtype=torch.float64),), None


CASES = [
    ("embedding", lambda w: F.embedding(INDICES, w), (r(6, 3),), None),
    ("embedding-1d-indices", lambda w: F.embedding(INDICES[0], w), (r(5, 2),), None),
    ("embedding-padding-idx", lambda w: F.embedding(INDICES, w, padding_idx=4), (r(6, 3),), None),
    ("embedding-negative-padding-idx", lambda w: F.embedding(INDICES, w, padding_idx=-5),
     (r(6, 3),), None),
    ("embedding-scale-grad-by-freq", lambda w: F.embedding(INDICES, w, scale_grad_by_freq=True),
     (r(6, 3),), None),
    ("embedding-scaled-padding", lambda w: F.embedding(
        INDICES, w, padding_idx=1, scale_grad_by_freq=True), (r(6, 3),), None),
    *embedding_bag_cases(),
    ("native-dropout", native_dropout(0.4), (r(4, 5),), None),
    ("native-dropout-all", native_dropout(1.0), (r(2, 3),), None),
]  # fmt: skip


# sparse=True (a sparse gradient, which the per-operation oracle cannot differentiate):
# test_engine_graphs_cnn.py::test_sparse_lookup_equals_dense_oracle


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)
