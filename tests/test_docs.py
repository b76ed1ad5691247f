"""Every code block of README.md and docs/**/*.md runs as written, so that none can rot.

The convention (the docs' authors write to it):

- The ```python blocks of one page run top to bottom in ONE namespace (a later block may use
  what an earlier one defined), in a fresh temporary working directory, on the CPU.
- A block whose preceding line (blank lines aside) is ``<!-- test: slow -->`` runs only under
  ``-m slow``; ``<!-- test: skip (reason) -->`` never runs, and the reason is required (a GPU, a
  cluster, the network, or a run of an hour). A marker without a reason, or an unknown marker,
  fails the page's test.
- ```sh / ```bash blocks run in bash (``-euo pipefail``), in a temporary folder that holds the
  repository's ``examples/`` and ``benchmarks/``, with ``hesscale`` and ``python`` meaning this
  checkout's command and interpreter. Lines that install (``pip ...``), run this suite
  (``python -m pytest ...``) or build or serve these docs (``mkdocs ...``) are not run here:
  CI runs them itself (``.ci/run``). A shell block that is not run for another reason carries a
  skip marker with that reason.
- ```text blocks (output as it came out) and other languages are not run.

A block that raises (or a command that exits non-zero) fails its page's test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import hesscale

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PYTHON = {"python", "py"}
SHELL = {"sh", "bash", "shell"}
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->$")
# commands CI runs itself (.ci/run): installing, this test suite, building the docs
NOT_RUN_HERE = re.compile(r"^(pip\s|python -m pytest(\s|$)|mkdocs\s)")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the block's first code line
    language: str
    code: str
    marker: str  # "", "slow" or "skip"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse_marker(text: str, where: str) -> tuple[str, str]:
    """``slow`` / ``skip (reason)`` -> (kind, reason); anything else is an error."""
    if text == "slow":
        return "slow", ""
    skip = re.fullmatch(r"skip\s*\((.*)\)", text)
    if skip and skip.group(1).strip():
        return "skip", skip.group(1).strip()
    raise ValueError(
        f"{where}: unknown docs-test marker <!-- test: {text} -->; use <!-- test: slow --> or "
        "<!-- test: skip (why: GPU, cluster, network, an hour's run) -->"
    )


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, with the marker each carries."""
    lines = page.read_text().splitlines()
    blocks, i, previous = [], 0, ""
    while i < len(lines):
        fence = FENCE.match(lines[i].strip())
        if not fence:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        ticks, language, start = fence.group(1), fence.group(2).lower(), i + 1
        end = start
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        marker, reason = "", ""
        found = MARKER.match(previous)
        if found:
            marker, reason = parse_marker(found.group(1), f"{page.relative_to(ROOT)}:{i + 1}")
        blocks.append(Block(page, start + 1, language, "\n".join(lines[start:end]), marker, reason))
        i, previous = end + 1, ""
    return blocks


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def python_params() -> list:
    """Each page with python blocks; again under -m slow for a page with slow blocks."""
    params = []
    for page in PAGES:
        blocks = [b for b in code_blocks(page) if b.language in PYTHON]
        if any(b.marker == "" for b in blocks):
            params.append(pytest.param(page, False, id=page_id(page)))
        if any(b.marker == "slow" for b in blocks):
            params.append(
                pytest.param(page, True, id=f"{page_id(page)}-slow", marks=pytest.mark.slow)
            )
    return params


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_markers_are_well_formed(page):
    """Every marker is known and every skip has a reason (parsing raises otherwise), and a
    marker stands before a code block, never alone."""
    markers = [line for line in page.read_text().splitlines() if MARKER.match(line.strip())]
    attached = [b for b in code_blocks(page) if b.marker]
    assert len(attached) == len(markers), f"{page_id(page)}: a test marker not before a block"


@contextmanager
def registries_restored():
    """A page may register rules and components (as its readers would); they are removed
    afterwards, so that the rest of the suite sees hesscale's own registries."""
    from hesscale.engine.registry import RULES

    rules = dict(RULES)
    try:
        from hesscale.experiments.learners import LEARNERS
        from hesscale.experiments.networks import NETWORKS
        from hesscale.experiments.tasks import TASKS
    except ImportError:  # without the experiments extra
        LEARNERS = NETWORKS = TASKS = {}
    components = [(registry, set(registry)) for registry in (TASKS, NETWORKS, LEARNERS)]
    try:
        yield
    finally:
        RULES.clear()
        RULES.update(rules)
        for registry, names in components:
            for name in set(registry) - names:
                registry.unregister(name)


def run_python(blocks: list[Block], tmp_path, monkeypatch) -> dict:
    """Run the blocks in order, in one namespace, in tmp_path; return the namespace."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__main__"}
    dtype = torch.get_default_dtype()
    with registries_restored():
        run_blocks(blocks, namespace, dtype)
    return namespace


def run_blocks(blocks: list[Block], namespace: dict, dtype: torch.dtype) -> None:
    try:
        for block in blocks:
            padded = "\n" * (block.line - 1) + block.code  # tracebacks name the page's lines
            try:
                exec(compile(padded, str(block.page), "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"the code block at {block.where} raised {error!r}") from error
    finally:
        torch.set_default_dtype(dtype)


def python_blocks(page: Path, slow: bool) -> list[Block]:
    kinds = {"", "slow"} if slow else {""}
    return [b for b in code_blocks(page) if b.language in PYTHON and b.marker in kinds]


@pytest.mark.parametrize(("page", "slow"), python_params())
def test_python_blocks_run(page, slow, tmp_path, monkeypatch):
    run_python(python_blocks(page, slow), tmp_path, monkeypatch)


def commands(code: str) -> str:
    """The block's commands as a bash script, without those CI runs itself."""
    logical = re.sub(r"\s*\\\n\s*", " ", code).splitlines()
    return "\n".join(line for line in logical if not NOT_RUN_HERE.match(line.strip()))


PASSED_SCRIPTS: set[tuple[str, ...]] = set()  # a command shown on several pages runs once


def script_key(script: str) -> tuple[str, ...]:
    """The commands without their trailing comments."""
    return tuple(re.sub(r"\s+#\s.*$", "", line).strip() for line in script.splitlines())


def run_shell(block: Block, folder: Path) -> None:
    """Run a shell block with this checkout's `hesscale` and `python`, in folder."""
    script = commands(block.code)
    if not script.strip() or script_key(script) in PASSED_SCRIPTS:
        return
    bin_dir = folder / ".bin"
    bin_dir.mkdir(exist_ok=True)
    for name, command in {"hesscale": "-m hesscale", "python": ""}.items():
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {command} "$@"\n')
        shim.chmod(0o755)
    for shared in ("examples", "benchmarks"):
        if not (folder / shared).exists():
            (folder / shared).symlink_to(ROOT / shared)
    source = str(Path(hesscale.__file__).resolve().parents[1])  # the hesscale these tests import
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
        + os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
        "MPLBACKEND": "Agg",
        # as the suite does in-process (conftest.py): spare threads only spin on a shared CPU
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, (
        f"the shell block at {block.where} exited {done.returncode}:\n{script}\n"
        f"--- stdout (end) ---\n{done.stdout[-3000:]}\n--- stderr (end) ---\n{done.stderr[-3000:]}"
    )
    PASSED_SCRIPTS.add(script_key(script))


def shell_blocks(page: Path, slow: bool) -> list[Block]:
    return [
        b
        for b in code_blocks(page)
        if b.language in SHELL and b.marker == ("slow" if slow else "") and commands(b.code).strip()
    ]


def shell_params(slow: bool) -> list:
    marks = [pytest.mark.slow] if slow else []
    return [
        pytest.param(block, id=block.where, marks=marks)
        for page in PAGES
        for block in shell_blocks(page, slow)
    ]


def skipped_params() -> list:
    """Blocks marked skip, reported as skipped tests with their reason."""
    return [
        pytest.param(
            block, id=block.where, marks=pytest.mark.skip(reason=f"{block.where}: {block.reason}")
        )
        for page in PAGES
        for block in code_blocks(page)
        if block.marker == "skip"
    ]


@pytest.mark.parametrize("block", skipped_params())
def test_block_marked_skip(block):
    raise AssertionError("never runs")  # pragma: no cover


@pytest.mark.parametrize("block", shell_params(slow=False))
def test_shell_block_runs(block, tmp_path):
    run_shell(block, tmp_path)


@pytest.mark.parametrize("block", shell_params(slow=True))
def test_shell_block_runs_slow(block, tmp_path):
    run_shell(block, tmp_path)


# -- the parser itself ---------------------------------------------------------------------


def test_parser_reads_markers_and_refuses_a_skip_without_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- test: slow -->\n```python\nx = 1\n```\n\n"
        "<!-- test: skip (needs a GPU) -->\n\n```sh\nhesscale cost --device cuda\n```\n"
        "```text\nout\n```\n"
    )
    slow, skip, text = code_blocks(page)
    assert (slow.marker, slow.language, slow.code, slow.line) == ("slow", "python", "x = 1", 5)
    assert (skip.marker, skip.reason, skip.language) == ("skip", "needs a GPU", "sh")
    assert (text.marker, text.language) == ("", "text")
    for bad in ("<!-- test: skip -->", "<!-- test: skip () -->", "<!-- test: fast -->"):
        page.write_text(f"{bad}\n```python\nx = 1\n```\n")
        with pytest.raises(ValueError, match="marker"):
            code_blocks(page)


def test_a_raising_block_fails_with_its_place(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "page.md"
    page.write_text("```python\nvalue = 2\n```\n\n```python\nassert value == 3\n```\n")
    with pytest.raises(AssertionError, match=r"page.md:6 raised AssertionError"):
        run_python(code_blocks(page), tmp_path, monkeypatch)


def test_shell_lines_that_ci_runs_are_left_out():
    script = commands(
        'pip install -e ".[dev]"\nhesscale run --task digits \\\n  --lr 1\n'
        "python -m pytest -q\nmkdocs serve\npython examples/x.py"
    )
    assert script.splitlines() == ["hesscale run --task digits --lr 1", "python examples/x.py"]


def test_a_failing_command_fails_with_its_output(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    for shared in ("examples", "benchmarks"):
        (tmp_path / shared).mkdir()
    block = Block(tmp_path / "page.md", 3, "sh", "hesscale no-such-command", "")
    with pytest.raises(AssertionError, match="exited 2"):
        run_shell(block, tmp_path)


# -- the generated reference pages ---------------------------------------------------------


def load_hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def listed_names(markdown: str) -> list[str]:
    return [
        name
        for line in markdown.splitlines()
        if line.startswith("- **")
        for name in re.findall(r"`([^`]+)`", line)
    ]


def test_generated_operations_page_lists_exactly_the_registry():
    page = load_hooks().operations_markdown()
    registry = [
        name.removeprefix("torch::autograd::")
        for names in hesscale.supported_operations().values()
        for name in names
    ]
    assert sorted(listed_names(page)) == sorted(registry)
    for family, names in hesscale.supported_operations().items():
        assert f"- **{family}** ({len(names)}):" in page


def test_generated_modules_page_lists_exactly_the_registry():
    page = load_hooks().modules_markdown()
    assert sorted(listed_names(page)) == sorted(hesscale.supported_modules())


def test_generated_pages_are_in_the_nav_and_not_in_docs():
    hooks, config = load_hooks(), (ROOT / "mkdocs.yml").read_text()
    for page in hooks.GENERATED:
        assert page in config, f"{page} is not in mkdocs.yml's nav"
        assert not (ROOT / "docs" / page).exists(), f"docs/{page} would hide the generated page"


def test_every_page_in_docs_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert str(page.relative_to(ROOT / "docs")) in config, f"{page.name} is not in the nav"
