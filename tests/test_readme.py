"""The README: its first example runs as written, its commands are CI's, its list of supported
modules is the registry's."""

import re
from pathlib import Path

import torch

import hesscale

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    for p in namespace["model"].parameters():
        assert p.hesscale.shape == p.shape and p.hesscale_gn.shape == p.shape
        assert p.hesscale.abs().sum() > 0


def test_readme_commands_match_ci():
    readme, ci = README.read_text(), (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in readme and 'pip install -e ".[dev]"' in ci
    assert "python -m pytest -q" in readme and "python -m pytest -q" in ci
    assert "python -m pytest -q -m slow" in readme and "python -m pytest -q -m slow" in ci
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme  # the CPU-only wheel


def readme_supported_modules() -> set[str]:
    """The nn.Module names the README's "Supported" list names (``Conv1d/2d/3d`` is three)."""
    text = README.read_text()
    section = text[text.index("**Supported**") : text.index("Every entry of HesScaleGN")]
    names = set()
    for base, dims in re.findall(
        r"\b([A-Z][A-Za-z]*?)([123]d(?:/[123]d)*)?(?![A-Za-z0-9])", section
    ):
        for name in [base + d for d in dims.split("/")] if dims else [base]:
            cls = getattr(torch.nn, name, None)
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
                names.add(name)
    return names


def test_readme_lists_exactly_the_supported_modules():
    readme, registry = readme_supported_modules(), set(hesscale.supported_modules())
    assert readme - registry == set(), "the README lists modules without a rule"
    assert registry - readme == set(), "the README does not list these supported modules"


def test_readme_user_layer_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (code,) = [block for block in blocks if "set_module_extension" in block]
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    scale = namespace["model"][1].weight
    assert scale.hesscale.shape == scale.shape and scale.hesscale.abs().sum() > 0


def test_readme_lists_exactly_the_supported_operations():
    from hesscale.engine.registry import supported_operations_markdown

    text = README.read_text()
    start, end = "<!-- operations:start -->\n", "\n<!-- operations:end -->"
    listed = text[text.index(start) + len(start) : text.index(end)]
    assert listed == supported_operations_markdown(), (
        "README's operation list is stale: regenerate it with supported_operations_markdown()"
    )
