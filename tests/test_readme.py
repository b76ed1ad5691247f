"""The README's first example runs as written and leaves a diagonal on every parameter."""

import re
from pathlib import Path

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


def test_readme_user_layer_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (code,) = [block for block in blocks if "set_module_extension" in block]
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    scale = namespace["model"][1].weight
    assert scale.hesscale.shape == scale.shape and scale.hesscale.abs().sum() > 0
