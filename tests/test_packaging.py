"""What pip sees: license, one version, the library's own dependencies and the extras."""

import tomllib
from pathlib import Path

import hesscale

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_is_an_spdx_string_with_its_file():
    assert PROJECT["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PROJECT["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # PEP 639
    assert PROJECT["authors"] and PROJECT["urls"]


def test_one_source_for_the_version():
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["dynamic"]["version"] == {"attr": "hesscale.__version__"}
    assert hesscale.__version__.count(".") == 2


def test_the_library_needs_torch_and_backpack_only():
    names = [d.split(">")[0].split("<")[0].split("=")[0] for d in PROJECT["dependencies"]]
    assert names == ["torch", "backpack-for-pytorch"]
    extras = PROJECT["optional-dependencies"]
    assert {"numpy", "tqdm", "matplotlib", "scikit-learn"} <= set(extras["experiments"])
    assert "hesscale[experiments]" in extras["dev"]  # the README's install gets everything
