"""The approximation-quality study end to end, with tiny settings (seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from hesscale.cli import main
from hesscale.estimators import Zero, exact_hessian, hesscale_estimator
from hesscale.experiments.approx_quality import StudyConfig, run_seed, verdict

TINY = ["--seeds", "2", "--steps", "3", "--width", "4", "--depth", "2", "--samples", "2"]


def run_cli(tmp_path, *extra: str) -> int:
    return main(["approx-quality", *TINY, "--out", str(tmp_path), "--no-progress", *extra])


def test_tiny_run_writes_table_json_csv_and_figures(tmp_path, capsys):
    assert run_cli(tmp_path) == 0
    printed = capsys.readouterr().out
    assert "HesScale" in printed and "norm. mean" in printed
    assert "left out" not in printed and "layers:" not in printed  # the MLP has every method
    results = json.loads((tmp_path / "results.json").read_text())
    methods, layers = results["methods"], results["layers"]
    assert len(methods) == 12 and "Exact" not in methods
    assert layers == ["layer 1", "layer 2", "layer 3"]
    errors = np.asarray(results["errors"])
    assert errors.shape == (2, 3, len(methods), len(layers))
    assert np.all(errors >= 0)
    summary = {row["method"]: row for row in results["summary"]}
    assert summary["HesScale"]["normalised_per_seed"] == [1.0, 1.0]
    # cross-entropy: HesScale, HesScaleGN and the exact GGN are exact in the output layer
    for method in ("HesScale", "HesScaleGN", "GGN"):
        assert errors[:, :, methods.index(method), -1].max() < 1e-12
    # ... and the zero estimate is not
    assert errors[:, :, methods.index("Zero"), -1].min() > 1e-6
    with (tmp_path / "errors.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == errors.size
    first = rows[0]
    s, step = int(first["seed"]), int(first["step"])
    j, k = methods.index(first["method"]), layers.index(first["layer"])
    assert float(first["l1"]) == errors[s, step, j, k]
    with (tmp_path / "summary.csv").open() as f:
        assert {row["method"] for row in csv.DictReader(f)} == set(methods)
    for figure in ("normalised_error.png", "error_by_layer.png"):
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mse_relu_float32_subset_runs(tmp_path):
    args = ["--loss", "mse", "--activation", "relu", "--dtype", "float32"]
    assert run_cli(tmp_path, *args, "--methods", "HesScale,BL89,Zero") == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["methods"] == ["HesScale", "BL89", "Zero"]
    summary = {row["method"]: row for row in results["summary"]}
    # without a softmax, BL89 is HesScale's recursion
    assert summary["BL89"]["normalised_per_seed"] == pytest.approx([1.0, 1.0], rel=1e-5)


def test_exact_reference_has_zero_error_and_zero_estimate_has_the_diagonal_norm():
    config = StudyConfig(seeds=1, steps=2, width=5, depth=1)
    errors = run_seed(0, config, [exact_hessian(), Zero(), hesscale_estimator()])
    assert errors.shape == (2, 3, 2)
    assert np.all(errors[:, 0] == 0)
    assert np.all(errors[:, 1] > errors[:, 2])  # HesScale beats zero on every layer here


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "BL89,Zero"], "must include HesScale"),
        (["--methods", "HesScale,Magic"], "unknown method"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--data", "mnist", "--data-dir", "/nonexistent/place"], "--download"),
    ],
)
def test_bad_options_fail_with_a_clear_message(tmp_path, capsys, extra, message):
    assert run_cli(tmp_path, *extra) == 2
    assert message in capsys.readouterr().err


def write_idx(path, array: np.ndarray) -> None:
    """An MNIST-format (IDX) file of unsigned bytes: magic 0x08 0x<ndim>, big-endian sizes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_is_read_from_a_local_directory(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(6 * 28 * 28).reshape(6, 28, 28) % 256
    labels = np.array([3, 1, 4, 1, 5, 9])
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    args = ["--data", "mnist", "--data-dir", str(tmp_path), "--methods", "HesScale,Zero"]
    assert run_cli(tmp_path / "out", *args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["config"]["data"] == "mnist"
    assert np.asarray(results["errors"]).shape == (2, 3, 2, 3)


def test_verdict_requires_a_win_in_every_seed():
    rows = [
        {"method": "HesScale", "one_backprop": True, "normalised_per_seed": [1.0, 1.0]},
        {"method": "BL89", "one_backprop": True, "normalised_per_seed": [3.0, 0.9]},
        {"method": "KFAC-1", "one_backprop": True, "normalised_per_seed": [5.0, 4.0]},
        {"method": "GGN", "one_backprop": False, "normalised_per_seed": [0.5, 0.5]},
    ]
    beats_all, lines = verdict(rows)
    assert not beats_all and any("1/2 seeds" in line for line in lines)
    assert len(lines) == 2  # only the rivals that cost about one backprop
    rows[1]["normalised_per_seed"] = [3.0, 1.1]
    assert verdict(rows)[0]
    rows[1]["normalised_per_seed"] = [3.0, 1.0 + 1e-13]  # a tie is not a win
    beats_all, lines = verdict(rows)
    assert not beats_all and any("1/2 seeds, equal in 1" in line for line in lines)


def test_verdict_tells_ties_from_losses():
    from hesscale.experiments.approx_quality import verdict_summary

    rows = [
        {"method": "HesScale", "one_backprop": True, "normalised_per_seed": [1.0, 1.0]},
        {"method": "BL89", "one_backprop": True, "normalised_per_seed": [3.0, 2.0]},
        {"method": "KFAC-1", "one_backprop": True, "normalised_per_seed": [5.0, 4.0]},
    ]
    assert verdict_summary(rows) == "yes"
    rows[1]["normalised_per_seed"] = [3.0, 1.0]
    assert verdict_summary(rows).startswith("no: it ties with BL89 in 1 seed")
    assert "loses" not in verdict_summary(rows)
    rows[2]["normalised_per_seed"] = [0.5, 0.4]
    summary = verdict_summary(rows)
    assert "it loses to KFAC-1 in 2 seeds" in summary and "ties with BL89" in summary
    assert any("worse in 2" in line for line in verdict(rows)[1])


def test_relu_exact_ggn_is_shown_and_titles_name_the_setting(tmp_path, capsys):
    """On a ReLU network the GGN diagonal is the Hessian's: error 0, drawn as exact."""
    from hesscale.experiments.approx_quality import describe_setting, layer_labels

    assert run_cli(tmp_path, "--activation", "relu", "--methods", "HesScale,GGN,Zero") == 0
    results = json.loads((tmp_path / "results.json").read_text())
    ggn = next(row for row in results["summary"] if row["method"] == "GGN")
    assert ggn["normalised_mean"] == 0.0
    assert (tmp_path / "normalised_error.png").read_bytes()[:4] == b"\x89PNG"
    setting = describe_setting(StudyConfig(seeds=2, steps=3, width=4, depth=2))
    assert setting == "digits, MLP 2x4 tanh, cross-entropy, 2 seeds x 3 steps"
    assert layer_labels(["layer 1", "layer 2"]) == ["layer 1", "layer 2 (output)"]
    assert "L1 3 out" in capsys.readouterr().out


# --- networks that are not chains of modules ---------------------------------------------------

ANY_MODEL_METHODS = [
    "GGN",
    "GGN-MC-1",
    "Hutchinson-1",
    "GGN-MC-2",
    "Hutchinson-2",
    "SquaredGrad",
    "HesScale",
    "HesScaleGN",
    "Zero",
]
LAYER_MODULES = {
    "residual": ["input", "blocks.0", "head"],
    "transformer": [
        "embed",
        "positions",
        "blocks.0.norm1",
        "blocks.0.attention.qkv",
        "blocks.0.attention.proj",
        "blocks.0.norm2",
        "blocks.0.mlp.0",
        "blocks.0.mlp.2",
        "norm",
        "head",
    ],
}


@pytest.mark.parametrize("network", ["residual", "transformer"])
def test_residual_and_transformer_runs_leave_out_backpack_methods(tmp_path, capsys, network):
    assert run_cli(tmp_path, "--network", network, "--depth", "1") == 0
    printed = capsys.readouterr().out
    assert f"left out on the {network} network" in printed
    assert "KFAC-1, KFAC-2, BL89" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["network"] == network
    assert "autograd" in results["reference"]
    methods, layers = results["methods"], results["layers"]
    assert methods == ANY_MODEL_METHODS and results["left_out"] == ["KFAC-1", "KFAC-2", "BL89"]
    assert results["layer_modules"] == LAYER_MODULES[network]
    assert layers == [f"layer {i + 1}" for i in range(len(LAYER_MODULES[network]))]
    errors = np.asarray(results["errors"])
    assert errors.shape == (2, 3, len(methods), len(layers)) and np.all(errors >= 0)
    # cross-entropy and a linear head: HesScale, HesScaleGN and the GGN are exact there; the
    # exact reference (autograd) and HesScale (the engine) are computed independently
    for method in ("HesScale", "HesScaleGN", "GGN"):
        assert errors[:, :, methods.index(method), -1].max() < 1e-12, method
    assert errors[:, :, methods.index("Zero"), -1].min() > 1e-6
    assert errors[:, :, methods.index("HesScale"), :-1].min() > 0  # not exact everywhere
    assert "layers: 1 " in printed and LAYER_MODULES[network][-1] in printed
    for figure in ("normalised_error.png", "error_by_layer.png"):
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_backpack_method_asked_for_on_the_transformer_is_left_out_with_a_note(tmp_path, capsys):
    args = ["--network", "transformer", "--methods", "HesScale,KFAC-1,GGN-MC-1"]
    assert run_cli(tmp_path, *args, "--depth", "1") == 0
    assert "(BackPACK, needs a chain of modules): KFAC-1" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["methods"] == ["HesScale", "GGN-MC-1"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--network", "transformer", "--activation", "relu"], "uses GELU"),
        (["--network", "transformer", "--width", "5"], "divisible by its 2 attention heads"),
        (["--network", "residual", "--methods", "HesScale,Magic"], "unknown method(s) Magic"),
    ],
)
def test_bad_network_options_fail_with_a_clear_message(tmp_path, capsys, extra, message):
    assert run_cli(tmp_path, *extra) == 2
    assert message in capsys.readouterr().err


def test_network_defaults_and_titles():
    from hesscale.experiments.approx_quality import describe_setting

    mlp, residual, transformer = (
        StudyConfig(network=n) for n in ("mlp", "residual", "transformer")
    )
    assert (mlp.width, mlp.depth, mlp.activation) == (32, 3, "tanh")  # as before
    assert (residual.width, residual.depth, residual.activation) == (32, 2, "tanh")
    assert (transformer.width, transformer.depth, transformer.activation) == (16, 1, "gelu")
    assert describe_setting(residual).startswith("digits, residual MLP 32 wide, 2 blocks")
    assert describe_setting(transformer).startswith("digits, transformer 16 wide, 1 block,")


@pytest.mark.slow
@pytest.mark.parametrize("network", ["residual", "transformer"])
def test_default_sized_networks_with_mse_in_float32(tmp_path, network):
    args = ["--network", network, "--seeds", "1", "--steps", "2", "--samples", "2"]
    args += ["--loss", "mse", "--dtype", "float32", "--out", str(tmp_path), "--no-progress"]
    assert main(["approx-quality", *args]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["width"] == (32 if network == "residual" else 16)
    methods, errors = results["methods"], np.asarray(results["errors"])
    zero = errors[:, :, methods.index("Zero"), -1]
    for method in ("HesScale", "HesScaleGN", "GGN"):  # MSE, linear head: exact there too
        assert np.all(errors[:, :, methods.index(method), -1] < 1e-5 * zero), method


def test_results_are_never_overwritten_silently(tmp_path, capsys):
    """Issue 17: two approx-quality runs shared results/approx-quality. A folder that holds
    results is refused without --force."""
    assert run_cli(tmp_path) == 0
    assert run_cli(tmp_path) == 2
    assert "already holds results" in capsys.readouterr().err
    assert run_cli(tmp_path, "--force") == 0


def test_a_failed_download_says_so_in_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    """Issue 17: `approx-quality --download` without network ended in a raw traceback and left
    an empty MNIST/raw folder behind."""
    import torchvision.datasets

    def offline(self, root, **kwargs):
        (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        print("Tried https://example.invalid/mnist/, got:")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n<urlopen error offline>")

    monkeypatch.setattr(torchvision.datasets.MNIST, "__init__", offline)
    data = tmp_path / "data"
    args = ["approx-quality", "--data", "mnist", "--download", "--data-dir", str(data)]
    assert main([*args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not be downloaded" in err[0] and "urlopen error" in err[0]
    assert not data.exists()
