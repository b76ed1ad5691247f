"""`hesscale run` launched by torchrun: a data-parallel run over 2 CPU processes (gloo) takes the
steps of a single-process run on the whole batch, and only rank 0 writes the log."""

from __future__ import annotations

import json
import socket

import pytest
import torch.multiprocessing as mp

from hesscale import cli

ARGS = [
    "run", "--task", "digits", "--network", "fc_tanh_small", "--learner", "adahesscale",
    "--lr", "0.003", "--steps", "12", "--bin-size", "4", "--batch-size", "16", "--seed", "3",
    "--no-progress", "--threads", "1",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str, codes) -> None:
    import os

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )  # fmt: skip
    codes[rank] = cli.main([*ARGS, "--out", out])


@pytest.mark.slow  # starts two processes
def test_two_ranks_take_the_single_process_steps(tmp_path):
    single, parallel = tmp_path / "single.json", tmp_path / "parallel.json"
    assert cli.main([*ARGS, "--out", str(single)]) == 0
    codes = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), str(parallel), codes), nprocs=2, join=True)
    assert dict(codes) == {0: 0, 1: 0}
    alone, together = json.loads(single.read_text()), json.loads(parallel.read_text())
    assert together["status"] == "finished" and together["steps_done"] == 12
    for a, b in zip(alone["loss"], together["loss"], strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)
    assert alone["accuracy"] == together["accuracy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parallel.json", "single.json"]


@pytest.mark.parametrize("batch", [15])
def test_a_batch_that_does_not_split_over_the_ranks_is_refused(
    batch, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    args = [*ARGS, "--out", str(tmp_path / "log.json")]
    args[args.index("--batch-size") + 1] = str(batch)
    assert cli.main(args) == 2
    assert "does not split evenly over the 2 processes" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
