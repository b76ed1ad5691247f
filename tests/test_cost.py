"""The cost study end to end on tiny settings (no timing assertions: timings are measured in
benchmarks/, never asserted)."""

from __future__ import annotations

import csv
import json
import math
import time

import pytest
import torch

from hesscale.cli import main as cli
from hesscale.experiments.cost import measure, methods, models

TINY = ["--widths", "8", "--depths", "1", "--batch", "4", "--repeats", "3", "--warmup", "1"]


def test_command_writes_table_csv_json_and_plot(tmp_path, capsys):
    chosen = ["HesScale", "HesScaleGN", "DiagGGNMC", "SGD"]
    assert cli(["cost", *TINY, "--methods", *chosen, "--out", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "HesScaleGN" in printed and "time x" in printed
    with open(tmp_path / "cost.csv") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert list(rows) == [methods.REFERENCE, *chosen]
    assert all(row["status"] == "ok" for row in rows.values())
    assert float(rows[methods.REFERENCE]["time_ratio"]) == 1.0
    assert float(rows[methods.REFERENCE]["memory_ratio"]) == 1.0
    # HesScale stores one more parameter-sized field than the gradient: more peak memory
    assert float(rows["HesScale"]["peak_mb"]) > float(rows[methods.REFERENCE]["peak_mb"]) > 0
    detailed = json.loads((tmp_path / "cost.json").read_text())
    assert all(len(entry["times_ms"]) == 3 for entry in detailed)
    assert (tmp_path / "cost.png").stat().st_size > 0
    assert "HesScale" in (tmp_path / "cost.txt").read_text()


def test_every_method_runs_on_a_tiny_mlp():
    config = measure.Config(model="mlp", width=6, depth=2, batch=3)
    results = measure.measure(config, list(methods.METHODS), repeats=2, warmup=1, progress=False)
    assert {r.method: r.status for r in results} == {name: "ok" for name in methods.METHODS}
    assert all(r.median_ms > 0 and r.peak_mb > 0 for r in results)


def test_cnn_runs_with_hesscale():
    config = measure.Config(model="cnn", width=2, depth=1, batch=2)
    methods = ["HesScale (BackPACK)", "HesScaleGN (BackPACK)"]
    results = measure.measure(config, methods, repeats=2, warmup=1, progress=False)
    assert [r.status for r in results] == ["ok"] * 3


def test_gpt_runs_with_the_engine_and_backpack_is_reported_as_skipped():
    config = measure.Config(model="gpt", width=8, depth=1, batch=2, activation="gelu")
    methods = ["HesScale", "HesScale (BackPACK)"]
    results = {
        r.method: r for r in measure.measure(config, methods, repeats=2, warmup=1, progress=False)
    }
    assert results["HesScale"].status == "ok"
    assert results["HesScale"].median_ms > 0
    assert results["HesScale (BackPACK)"].status.startswith("skipped")


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_cnn_shapes(depth):
    model = models.cnn(width=4, depth=depth)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_peak_memory_counts_what_a_step_allocates():
    one_mb = 2**20

    def run():
        a = torch.ones(one_mb // 4)  # 1 MiB, freed before the next one exists
        del a
        b = torch.ones(2 * one_mb // 4)  # 2 MiB: the peak
        del b

    step = methods.Step(run, torch.nn.Linear(1, 1))
    peak = measure.peak_step_bytes(step, "cpu")
    assert 2 * one_mb <= peak < 2 * one_mb + 64 * 1024


def test_a_failing_method_is_reported_not_fatal(monkeypatch):
    def broken(problem):
        raise RuntimeError("no rule for this")

    monkeypatch.setitem(methods.METHODS, "Broken", methods.Method("Broken", "curvature", broken))
    config = measure.Config(width=4, depth=1, batch=2)
    results = measure.measure(config, ["Broken"], repeats=2, warmup=1, memory=False, progress=False)
    broken_result = results[-1]
    assert broken_result.status.startswith("skipped: RuntimeError: no rule for this")
    assert math.isnan(broken_result.time_ratio)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_a_gpu_fails_with_a_clear_message(tmp_path, capsys):
    """Issue 17: it said nothing was measured but exited 0."""
    assert cli(["cost", *TINY, "--device", "cuda", "--out", str(tmp_path)]) == 1
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "cost.csv").exists()


def test_cpu_clock_needs_one_thread(tmp_path, capsys):
    assert cli(["cost", *TINY, "--threads", "2", "--clock", "cpu", "--out", str(tmp_path)]) == 2
    assert "--threads 1" in capsys.readouterr().err


def test_a_method_too_slow_at_one_width_is_skipped_at_larger_ones(monkeypatch, tmp_path, capsys):
    def slow(problem):
        step = methods._plain(problem)
        inner = step.run
        step.run = lambda: (time.sleep(0.05), inner())
        return step

    monkeypatch.setitem(methods.METHODS, "Slow", methods.Method("Slow", "curvature", slow))
    widths = ["--widths", "8", "4", "--depths", "1", "--batch", "2", "--repeats", "2"]
    args = [*widths, "--warmup", "1", "--max-step-seconds", "0.01", "--no-memory", "--quiet"]
    assert cli(["cost", *args, "--methods", "Slow", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "cost.csv") as f:
        status = [(row["width"], row["method"], row["status"]) for row in csv.DictReader(f)]
    assert status[0] == ("4", methods.REFERENCE, "ok")
    assert status[1][:2] == ("4", "Slow") and status[1][2].startswith(
        measure.TOO_SLOW + ": one step"
    )
    assert status[3] == ("8", "Slow", measure.TOO_SLOW)
    assert (tmp_path / "cost.png").exists()  # plots without any memory measurement


def test_the_cost_cnn_is_the_3c3d_of_the_runs():
    """One 3c3d in the code base: the cost study's CNN at width 64, depth 3 is cifar10_3c3d."""
    from hesscale.experiments.networks import build_network

    ours, theirs = models.cnn(64, 3), build_network("cifar10_3c3d", (3, 32, 32), 10)
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    pads = [m.padding for m in ours if isinstance(m, torch.nn.ZeroPad2d)]
    assert pads == [(0, 1, 0, 1), (0, 1, 0, 1), (0, 1, 0, 1)]  # TensorFlow's 'same' pooling


def test_cost_plot_puts_outliers_in_their_own_panel_and_names_the_setting(tmp_path):
    from hesscale.experiments.cost import report

    config = measure.Config(model="mlp", width=8, depth=2, batch=16, threads=1, clock="cpu")
    results = [
        measure.Result(config, methods.REFERENCE, "backprop", time_ratio=1.0, memory_ratio=1.0),
        measure.Result(config, "HesScale", "curvature", time_ratio=2.0, memory_ratio=1.4),
        measure.Result(config, "DiagHessian", "curvature", time_ratio=150.0, memory_ratio=3.0),
    ]
    assert report.outlier_methods(results, "time_ratio") == {"DiagHessian"}
    assert report.outlier_methods(results, "memory_ratio") == set()
    title = report.describe_setting(results)
    assert "MLP" in title and "batch 16" in title and "1 thread" in title and "cpu clock" in title
    assert report.plot(results, tmp_path / "cost.png").read_bytes()[:4] == b"\x89PNG"
    strong = report.line_style("HesScale", "curvature", 0)
    muted = report.line_style("DiagGGNMC", "curvature", 0)
    assert strong["linewidth"] > muted["linewidth"] and strong["zorder"] > muted["zorder"]


def test_a_failure_part_way_keeps_what_was_measured_and_ends_with_one_line(
    monkeypatch, tmp_path, capsys
):
    """Issue 17: `hesscale cost --model gpt` crashed part-way with a traceback, losing what it
    had measured."""
    real = measure.measure
    from hesscale.experiments.cost import cli as cost_cli

    def fails_at_width_16(config, *args, **kwargs):
        if config.width == 16:
            raise RuntimeError("a model that cannot run\n  with details below")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(cost_cli, "measure", fails_at_width_16)
    args = [*TINY, "--widths", "8", "16", "--methods", "forward+backward", "--no-memory"]
    assert cli(["cost", *args, "--out", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "hesscale cost: stopped: RuntimeError: a model that cannot run; the 1 results "
        f"measured before it are in {tmp_path}."
    ]
    assert len(json.loads((tmp_path / "cost.json").read_text())) == 1


def test_settings_a_model_cannot_take_end_in_one_line(tmp_path, capsys):
    """Issue 17: `hesscale cost --model resnet18 --widths 32` ended in a raw traceback."""
    assert cli(["cost", "--model", "resnet18", "--widths", "32", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "width" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "cost.json").exists()


def test_results_are_never_overwritten_silently(tmp_path, capsys):
    """Issue 17: every `hesscale cost` command wrote results/cost. The default folder is
    results/cost/MODEL, and a folder that holds results is refused without --force."""
    args = ["cost", *TINY, "--methods", "forward+backward", "--no-memory", "--quiet"]
    assert cli([*args, "--out", str(tmp_path)]) == 0
    assert cli([*args, "--out", str(tmp_path)]) == 2
    assert "already holds results" in capsys.readouterr().err
    assert cli([*args, "--out", str(tmp_path), "--force"]) == 0


@pytest.mark.slow
def test_gpt_cost_command_at_its_default_sizes_runs_to_the_end(tmp_path, capsys):
    """``hesscale cost --model gpt`` with its default sizes (width 128, 2 blocks, batch 4,
    vocabulary 512, 64 tokens), fewer rounds: every optimizer step stays finite (the GPT starts
    as GPT-2 does, not from logits of std ~12), and the command writes its outputs."""
    argv = ["cost", "--model", "gpt", "--repeats", "2", "--warmup", "2", "--quiet"]
    assert cli([*argv, "--out", str(tmp_path)]) == 0
    with open(tmp_path / "cost.csv") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert {row["width"] for row in rows.values()} == {"128"}
    for method in ("HesScale", "HesScaleGN", "Adam", "AdaHesScale", "AdaHesScaleGN"):
        assert rows[method]["status"] == "ok", (method, rows[method]["status"])
    assert "NonFinite" not in capsys.readouterr().err
