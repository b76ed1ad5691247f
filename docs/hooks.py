"""MkDocs hook: writes the reference pages generated from hesscale's registries at build time.

``reference/operations.md`` lists ``hesscale.supported_operations()`` (the autograd nodes
``hesscale.backward`` has a rule for) and ``reference/modules.md`` lists
``hesscale.supported_modules()`` (the nn.Module types of the BackPACK extensions), so that the
site can never list an operation without a rule or miss one. ``tests/test_docs.py`` checks both
pages against the registries.
"""

from __future__ import annotations

OPERATIONS_PAGE = "reference/operations.md"
MODULES_PAGE = "reference/modules.md"


def operations_markdown() -> str:
    """The page of supported autograd operations, one section per family of rules."""
    import hesscale
    from hesscale.engine.ops import supported_operations_markdown

    families = hesscale.supported_operations()
    total = sum(len(names) for names in families.values())
    return "\n".join(
        [
            "# Supported operations",
            "",
            f"`hesscale.backward` has a rule for these {total} autograd operations, in "
            f"{len(families)} families (`hesscale.supported_operations()`; generated from the "
            "registry when the site is built). An operation is named as autograd names its "
            "node: `type(t.grad_fn).__name__` or `t.grad_fn.name()` for a tensor `t` it made. "
            "Any other operation in a loss's graph raises `UnsupportedOperationError` before "
            "anything is computed, naming the node and the path from the loss to it; "
            "[A rule for a new operation](../tutorials/new-rule.md) shows how to add one.",
            "",
            supported_operations_markdown(),
            "",
        ]
    )


def modules_markdown() -> str:
    """The page of nn.Module types the BackPACK extensions support, grouped by family."""
    import hesscale
    from hesscale.extensions.registry import ADAPTORS

    families: dict[str, list[str]] = {}
    for module_type, adaptor in ADAPTORS.items():
        family = type(adaptor).__module__.rsplit(".", 1)[-1]
        families.setdefault(family, []).append(module_type.__name__)
    lines = [
        "# Supported modules",
        "",
        f"The BackPACK extensions `HesScale()` and `HesScaleGN()` have a rule for these "
        f"{len(hesscale.supported_modules())} `torch.nn` module types "
        "(`hesscale.supported_modules()`; generated from the registry when the site is built). "
        "Any other module in an `extend`-ed model raises `UnsupportedModuleError`; "
        "[The BackPACK extensions](../tutorials/backpack.md) says which options of each are "
        "supported, and [A rule for a new operation](../tutorials/new-rule.md) how to add a "
        "rule for a layer of your own. `hesscale.backward` needs no module rules: it works on "
        "the [operations](operations.md) any module records.",
        "",
    ]
    for family, names in sorted(families.items()):
        shown = ", ".join(f"`{name}`" for name in sorted(names))
        lines.append(f"- **{family}** ({len(names)}): {shown}")
    return "\n".join(lines) + "\n"


GENERATED = {OPERATIONS_PAGE: operations_markdown, MODULES_PAGE: modules_markdown}


def on_files(files, config):
    """Add the generated pages to the site (they exist only in the build, never in docs/)."""
    from mkdocs.structure.files import File

    for src_uri, make in GENERATED.items():
        files.append(File.generated(config, src_uri, content=make()))
    return files
