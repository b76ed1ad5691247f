"""The README: its first example runs as written, its commands are CI's, its list of supported
modules is the registry's."""

import re
from pathlib import Path

import torch

import hesscale

README = Path(__file__).resolve().parents[1] / "README.md"


def _run_seeded(code: str, seed: int) -> dict:
    """Run a README block with torch's generator seeded, so that its random draws can be
    replayed."""
    torch.manual_seed(seed)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


def _exact_hessian_diagonal(loss_of) -> torch.Tensor:
    """diag of the dense Hessian of ``loss_of(flat parameter)`` at ``loss_of.at``."""
    hessian = torch.autograd.functional.hessian(loss_of, loss_of.at.detach().clone())
    return torch.diagonal(hessian)


def test_readme_quickstart_runs():
    """The block's last layer feeds the loss linearly, so both of its diagonals are the exact
    Hessian diagonal of the loss w.r.t. that layer (replayed from the same random draws)."""
    import torch.nn.functional as F

    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    namespace = _run_seeded(code, seed=0)
    model = namespace["model"]
    for p in model.parameters():
        assert p.hesscale.shape == p.shape and p.hesscale_gn.shape == p.shape
        assert p.hesscale.abs().sum() > 0
    torch.manual_seed(0)
    type(model)()  # the same draws as the block: the model's initialization, then the data
    x, y = torch.randn(8, 6), torch.randint(0, 10, (8,))
    features = model.norm(x + F.gelu(model.inner(x))).detach()
    for name in ("weight", "bias"):
        param = getattr(model.out, name)

        def loss_of(flat, name=name, param=param):
            weights = {"weight": model.out.weight, "bias": model.out.bias}
            weights[name] = flat.view_as(param)
            return F.cross_entropy(F.linear(features, **weights), y)

        loss_of.at = param.reshape(-1)
        exact = _exact_hessian_diagonal(loss_of).view_as(param)
        torch.testing.assert_close(param.hesscale, exact, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(param.hesscale_gn, exact, rtol=1e-4, atol=1e-7)


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
    namespace = _run_seeded(code, seed=1)
    scale = namespace["model"][1].weight
    assert scale.hesscale.shape == scale.shape and scale.hesscale.abs().sum() > 0
    # the user's rule against the engine on the same model and data (x * a as autograd sees it)
    import torch.nn.functional as F

    first, last = namespace["model"][0], namespace["model"][2]
    torch.manual_seed(1)
    namespace["Scale"](4), torch.nn.Linear(6, 4), torch.nn.Linear(4, 3)  # replay the draws
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    a = scale.detach().clone().requires_grad_(True)
    hesscale.backward(F.cross_entropy(last(first(x) * a), y), inputs=[a])
    torch.testing.assert_close(scale.hesscale, a.hesscale, rtol=1e-5, atol=1e-8)


def test_readme_lists_exactly_the_supported_operations():
    from hesscale.engine.ops import supported_operations_markdown

    text = README.read_text()
    start, end = "<!-- operations:start -->\n", "\n<!-- operations:end -->"
    listed = text[text.index(start) + len(start) : text.index(end)]
    assert listed == supported_operations_markdown(), (
        "README's operation list is stale: regenerate it with supported_operations_markdown()"
    )
