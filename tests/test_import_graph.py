"""Dependencies run one way: no module of hesscale imports, directly or through others, a module
that imports it back (the experiments' RL package plugs into the registries instead)."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

import hesscale

PACKAGE = pathlib.Path(hesscale.__file__).parent


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _under_type_checking(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (never run)."""
    return {
        id(inner)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for inner in ast.walk(statement)
    }


def imports_of(name: str) -> set[str]:
    """The hesscale modules ``name`` imports anywhere in its code (also inside functions)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    skipped = _under_type_checking(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return (found & set(MODULES)) - {name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    graph = {name: imports_of(name) for name in MODULES}
    assert graph["hesscale.experiments.rl.components"] >= {"hesscale.experiments.networks"}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    "name", [n for n in MODULES if n.startswith("hesscale.experiments") and "__main__" not in n]
)
def test_every_experiments_module_imports(name):
    importlib.import_module(name)


def test_rl_plugs_into_the_registries():
    from hesscale.experiments.networks import NETWORKS
    from hesscale.experiments.plot import group_plotter
    from hesscale.experiments.tasks import TASKS

    assert "actor_critic_tanh_shared" in NETWORKS and NETWORKS.is_builtin("actor_critic_relu")
    assert TASKS.find("rl:Pendulum-v1") is not None
    assert group_plotter("rl:Hopper-v5") is not None and group_plotter("digits") is None
