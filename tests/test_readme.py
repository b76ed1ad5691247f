"""The README is the landing page: short, with the three commands CI runs, and an example whose
numbers are right (its blocks also run in tests/test_docs.py). The lists of supported modules and
operations moved to the docs: the BackPACK tutorial's list must name exactly the registry's."""

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, hessian

import hesscale
from tests.test_docs import code_blocks, run_python

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BACKPACK_PAGE = ROOT / "docs" / "tutorials" / "backpack.md"
INSTALL, MAIN_JOB, TESTS = (
    'pip install -e ".[dev]"',
    "hesscale approx-quality",
    "python -m pytest -q",
)


def test_readme_is_a_short_landing_page_with_the_three_commands():
    text = README.read_text()
    assert len(text.splitlines()) < 150
    (commands,) = [b.code for b in code_blocks(README) if INSTALL in b.code]
    lines = [line.split("#")[0].strip() for line in commands.splitlines()]
    assert lines == [INSTALL, MAIN_JOB, TESTS]
    # the CPU-only wheel comes before the install line, with the sizes that motivate it
    cpu_wheel = text.index("--index-url https://download.pytorch.org/whl/cpu")
    assert cpu_wheel < text.index(INSTALL) and "5.9 GB" in text and "3.2 GB" in text
    assert "mkdocs serve" in text


def test_readme_commands_match_ci():
    readme, ci = README.read_text(), (ROOT / ".ci" / "run").read_text()
    assert INSTALL in readme and INSTALL in ci
    assert TESTS in readme and TESTS in ci
    assert "python -m pytest -q -m slow" in readme and "python -m pytest -q -m slow" in ci
    assert re.search(r"^mkdocs build --strict", ci, re.M), "CI builds the docs strictly"


def test_readme_example_gives_autograd_gradients_and_the_exact_last_layer(tmp_path, monkeypatch):
    """The example's diagonals, checked against brute force: for a Linear layer scored by
    cross-entropy per sample, both variants are exactly the Hessian's diagonal."""
    (example,) = [b for b in code_blocks(README) if b.language == "python"]
    example.code = example.code.split("opt = AdaHesScale")[0]  # the diagonals, not the training
    torch.manual_seed(0)
    namespace = run_python([example], tmp_path, monkeypatch)
    model, x, y = namespace["model"], namespace["x"], namespace["y"]
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss_of(name):
        return lambda value: F.cross_entropy(functional_call(model, {**params, name: value}, x), y)

    gradients = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    for p, grad in zip(model.parameters(), gradients, strict=True):
        torch.testing.assert_close(p.grad, grad)
        assert p.hesscale.shape == p.shape and p.hesscale.dtype == p.dtype
        assert (p.hesscale_gn >= 0).all(), "HesScaleGN of cross-entropy is non-negative"
    for name in ("2.weight", "2.bias"):  # the last layer: exact
        exact = hessian(loss_of(name))(params[name]).reshape(params[name].numel(), -1).diagonal()
        p = dict(model.named_parameters())[name]
        torch.testing.assert_close(p.hesscale.flatten(), exact, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(p.hesscale_gn, p.hesscale)
    # below it, tanh's curvature is what HesScale keeps and HesScaleGN drops
    assert not torch.allclose(model[0].weight.hesscale, model[0].weight.hesscale_gn)


def test_readme_example_trains(tmp_path, monkeypatch):
    (example,) = [b for b in code_blocks(README) if b.language == "python"]
    torch.manual_seed(0)
    namespace = run_python([example], tmp_path, monkeypatch)
    model, x, y = namespace["model"], namespace["x"], namespace["y"]
    torch.manual_seed(0)
    untrained = torch.nn.Sequential(
        torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)
    )
    with torch.no_grad():
        assert F.cross_entropy(model(x), y) < F.cross_entropy(untrained(x), y) - 0.05


def listed_modules(text: str) -> set[str]:
    """The nn.Module names a prose list names (``Conv1d/2d/3d`` is three)."""
    names = set()
    for base, dims in re.findall(r"\b([A-Z][A-Za-z]*?)([123]d(?:/[123]d)*)?(?![A-Za-z0-9])", text):
        for name in [base + d for d in dims.split("/")] if dims else [base]:
            cls = getattr(torch.nn, name, None)
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
                names.add(name)
    return names


def test_backpack_page_lists_exactly_the_supported_modules():
    text = BACKPACK_PAGE.read_text()
    listed = listed_modules(text[text.index("**Supported**") : text.index("<!-- supported:end")])
    registry = set(hesscale.supported_modules())
    assert listed - registry == set(), "the docs list modules without a rule"
    assert registry - listed == set(), "the docs do not list these supported modules"
