"""Data parallel training: under DistributedDataParallel (2 CPU processes, gloo) the diagonals
are averaged over ranks as the gradients are, with the user's loop unchanged."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import hesscale
from hesscale.optim import AdaHesScale

WORLD = 2
pytestmark = pytest.mark.slow  # each test starts two processes (~10 s)


class WithUnusedBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        self.extra = nn.Linear(4, 3)  # never used in forward

    def forward(self, x):
        return self.body(x)


def network(seed=0, unused_branch=False):
    torch.manual_seed(seed)
    if unused_branch:
        return WithUnusedBranch().double()
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def run_ranks(fn, tmp_path, *args):
    mp.spawn(_worker, args=(fn, str(tmp_path / "store"), args), nprocs=WORLD, join=True)


def _worker(rank, fn, store, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    finally:
        gc.collect()  # DDP modules (reference cycles) go before their process group does
        dist.barrier()
        dist.destroy_process_group()


def shard(rank, x, y):
    n = x.shape[0] // WORLD
    return x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n]


def _averaged_diagonal_equals_full_batch(rank):
    x, y = batch()
    reference = network()
    hesscale.backward(F.cross_entropy(reference(x), y), gn="both")
    model = DDP(network())
    hesscale.backward(
        F.cross_entropy(model(*shard(rank, x, y)[:1]), shard(rank, x, y)[1]), gn="both"
    )
    for p, q in zip(model.module.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p.hesscale, q.hesscale, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(p.hesscale_gn, q.hesscale_gn, rtol=1e-10, atol=1e-12)


def _steps_equal_single_process(rank):
    x, y = batch(16)
    reference = network()
    opt_ref = AdaHesScale(reference.parameters(), lr=0.05)
    model = DDP(network())
    opt = AdaHesScale(model.parameters(), lr=0.05)
    xs, ys = shard(rank, x, y)
    for _ in range(10):
        opt_ref.step(lambda: F.cross_entropy(reference(x), y))
        opt.zero_grad()
        hesscale.backward(F.cross_entropy(model(xs), ys))
        opt.step()
    for p, q in zip(model.module.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def _no_sync_accumulates_and_unused_parameters(rank):
    x, y = batch(16)
    reference = network(unused_branch=True)
    for half in (slice(0, 8), slice(8, 16)):
        hesscale.backward(F.cross_entropy(reference(x[half]), y[half]) / 2)
    model = DDP(network(unused_branch=True), find_unused_parameters=True)
    micro = [shard(rank, x[h], y[h]) for h in (slice(0, 8), slice(8, 16))]
    with model.no_sync():
        hesscale.backward(F.cross_entropy(model(micro[0][0]), micro[0][1]) / 2)
    local = model.module.body[0].weight.hesscale.clone()
    hesscale.backward(F.cross_entropy(model(micro[1][0]), micro[1][1]) / 2)
    assert not torch.allclose(local, model.module.body[0].weight.hesscale)
    pairs = zip(model.module.body.parameters(), reference.body.parameters(), strict=True)
    for p, q in pairs:
        torch.testing.assert_close(p.hesscale, q.hesscale, rtol=1e-10, atol=1e-12)
    assert model.module.extra.weight.grad is None or not model.module.extra.weight.grad.any()


@pytest.mark.parametrize(
    "check",
    [
        _averaged_diagonal_equals_full_batch,
        _steps_equal_single_process,
        _no_sync_accumulates_and_unused_parameters,
    ],
)
def test_under_ddp(check, tmp_path):
    run_ranks(check, tmp_path)


def test_without_ddp_nothing_is_averaged(tmp_path):
    run_ranks(_independent_models_keep_their_own_diagonals, tmp_path)


def _independent_models_keep_their_own_diagonals(rank):
    """Processes that train their own models (e.g. RL workers) are left alone: each keeps the
    diagonal of its own data (the BackPACK adaptor, which never averages, is the reference)."""
    from backpack import backpack, extend

    x, y = batch()
    xs, ys = shard(rank, x, y)
    model = network()
    extended = extend(copy.deepcopy(model))
    with backpack(hesscale.HesScale()):
        extend(nn.CrossEntropyLoss())(extended(xs), ys).backward()
    hesscale.backward(F.cross_entropy(model(xs), ys))
    for p, q in zip(model.parameters(), extended.parameters(), strict=True):
        torch.testing.assert_close(p.hesscale, q.hesscale, rtol=1e-10, atol=1e-12)


# Ranks whose graphs differ: a trunk with two heads, rank r uses head r ---------------------


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 6)
        self.heads = nn.ModuleList([nn.Linear(6, 3), nn.Linear(6, 3)])

    def forward(self, x, head):
        return self.heads[head](torch.tanh(self.trunk(x)))


def two_heads(seed=0):
    torch.manual_seed(seed)
    return TwoHeads().double()


def _per_rank_average(x, y, micro_batches=1):
    """Each rank's gradient and diagonals computed alone (rank r: head r, its shard), then
    averaged over ranks; parameters a rank does not use contribute zeros."""
    total = {}
    for rank in range(WORLD):
        model = two_heads()
        xs, ys = shard(rank, x, y)
        for xm, ym in zip(xs.chunk(micro_batches), ys.chunk(micro_batches), strict=True):
            hesscale.backward(F.cross_entropy(model(xm, rank), ym) / micro_batches, gn="both")
        for name, p in model.named_parameters():
            for kind in ("grad", "hesscale", "hesscale_gn"):
                value = getattr(p, kind, None)
                value = torch.zeros_like(p) if value is None else value
                total[name, kind] = total.get((name, kind), 0) + value / WORLD
    return total


def _assert_average(model, expected):
    for name, p in model.module.named_parameters():
        for kind in ("grad", "hesscale", "hesscale_gn"):
            value = getattr(p, kind, None)
            assert value is not None, (name, kind)
            torch.testing.assert_close(
                value,
                expected[name, kind],
                rtol=1e-10,
                atol=1e-12,
                msg=lambda m, name=name, kind=kind: (
                    f"rank {torch.distributed.get_rank()} {name}.{kind}: {m}"
                ),
            )


def _ranks_use_different_heads(rank, static_graph=False):
    x, y = batch(16)
    expected = _per_rank_average(x, y)
    options = {"static_graph": True} if static_graph else {"find_unused_parameters": True}
    model = DDP(two_heads(), **options)
    xs, ys = shard(rank, x, y)
    for _ in range(3):  # later steps: no stale diagonal of an unused head leaks in
        model.zero_grad()
        hesscale.backward(F.cross_entropy(model(xs, rank), ys), gn="both")
        _assert_average(model, expected)


def _different_heads_static_graph(rank):
    _ranks_use_different_heads(rank, static_graph=True)


def _different_heads_no_sync(rank):
    x, y = batch(16)
    expected = _per_rank_average(x, y, micro_batches=2)
    model = DDP(two_heads(), find_unused_parameters=True)
    xs, ys = shard(rank, x, y)
    (x0, x1), (y0, y1) = xs.chunk(2), ys.chunk(2)
    for _ in range(2):
        model.zero_grad()
        with model.no_sync():
            hesscale.backward(F.cross_entropy(model(x0, rank), y0) / 2, gn="both")
        hesscale.backward(F.cross_entropy(model(x1, rank), y1) / 2, gn="both")
        _assert_average(model, expected)


@pytest.mark.parametrize(
    "check", [_ranks_use_different_heads, _different_heads_static_graph, _different_heads_no_sync]
)
def test_ranks_with_different_graphs(check, tmp_path):
    run_ranks(check, tmp_path)
