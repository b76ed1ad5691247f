"""Tasks, networks and learners by reference: built in, registered from Python, or imported
from the user's own code.

A *reference* (``--task``, ``--network``, ``--learner``, or the same keys of a spec) is one of

- ``NAME``: a built-in component, or one registered from Python
  (``hesscale.experiments.register_task``, ``register_network``, ``register_learner``);
- ``package.module:attribute``: imported as Python imports it, with the working directory
  (and, for the references in a spec, the spec's folder) searched first, then ``--pythonpath``
  and ``PYTHONPATH``;
- ``path/to/file.py:attribute``: a Python file, relative to the working directory or to a
  spec's folder, imported with its folder on ``sys.path`` (as ``python file.py`` would);
- ``LABEL=REFERENCE``: one of the above, called LABEL in logs, output paths and plots
  (without a label the reference itself is the name).

What each kind of component must be is documented beside its built-ins: ``TaskFactory`` in
tasks.py, ``NetworkFactory`` in networks.py, ``LearnerSpec`` in learners.py. Every problem with
a reference (no such module or file, no such attribute, an object of the wrong kind, a factory
with the wrong signature) raises ``hesscale.errors.ComponentError`` naming the reference and
what was expected.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import site
import sys
import sysconfig
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from hesscale.errors import ComponentError

T = TypeVar("T")
FILE_MODULE_PREFIX = "hesscale_file_"  # modules imported from a file path


@dataclass(frozen=True)
class Resolved(Generic[T]):
    """A reference looked up: what it names and how another process finds it again."""

    label: str  # the name in logs, output paths and plots
    target: str  # the reference without its label
    value: T  # the checked component
    path: str | None  # the import path it came from (None: built in or registered by name)
    origin: str | None  # a folder another process must put on sys.path to import ``path``


# Packages that register components of their own (the RL tasks, networks and plots), named by
# module and imported on the first use of any registry, as entry points would be: they import
# the core modules, never the other way round.
BUILTIN_PLUGINS = ("hesscale.experiments.rl.components",)
_plugins = {"loaded": False}


def load_plugins() -> None:
    """Import the built-in plugins (once), so that their components are registered."""
    if _plugins["loaded"]:
        return
    _plugins["loaded"] = True
    for module in BUILTIN_PLUGINS:
        importlib.import_module(module)


class Registry(Mapping[str, T]):
    """The components of one kind, by name.

    Built-ins are registered when their module is imported; users add theirs with
    ``register``. A name ending in ``*`` registers a family: ``"rl:*"`` serves every reference
    that starts with ``rl:`` (a task factory reads the full name from its settings).
    ``check(obj, what)`` turns an object into a component, or raises ComponentError saying
    what a component of this kind must be.
    """

    def __init__(self, kind: str, check: Callable[[Any, str], T]) -> None:
        self.kind = kind
        self._check = check
        self._entries: dict[str, T] = {}
        self._builtin: set[str] = set()
        self._paths: dict[str, str | None] = {}  # user-registered name -> its import path

    def __getitem__(self, name: str) -> T:
        found = self.find(name)
        if found is None:
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(self._entries)

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)

    def find(self, name: str) -> T | None:
        """The component registered as ``name``, or as the family (``prefix*``) it belongs to."""
        load_plugins()
        if name in self._entries:
            return self._entries[name]
        families = [k for k in self._entries if k.endswith("*") and name.startswith(k[:-1])]
        return self._entries[max(families, key=len)] if families else None

    def is_builtin(self, name: str) -> bool:
        load_plugins()
        return name in self._builtin

    def register(
        self, name: str, component: Any, *, builtin: bool = False, path: str | None = None
    ) -> T:
        """Register ``component`` as ``name`` (checked now); returns the checked component.

        ``path``: an import path that gives the component back in another process (a process
        pool, a SLURM job); by default found from where the object is defined."""
        if not isinstance(name, str) or not name or "=" in name or name != name.strip():
            raise ComponentError(f"{self.kind} name {name!r}: use a non-empty name without '='.")
        if not builtin:
            load_plugins()  # a user's name must not shadow a plugin's built-in
        if name in self._builtin and not builtin:
            raise ComponentError(
                f"'{name}' is a built-in {self.kind}; register yours under another name."
            )
        checked = self._check(component, f"{self.kind} '{name}'")
        self._entries[name] = checked
        if builtin:
            self._builtin.add(name)
        else:
            self._paths[name] = path if path is not None else importable_path(component)
        return checked

    def unregister(self, name: str) -> None:
        """Remove a component registered from Python (built-ins stay)."""
        if name in self._builtin:
            raise ComponentError(f"'{name}' is a built-in {self.kind}; it cannot be removed.")
        self._entries.pop(name, None)
        self._paths.pop(name, None)

    def user_path(self, name: str) -> str | None:
        """The import path recorded when ``name`` was registered from Python (None if none)."""
        return self._paths.get(name)

    def known(self) -> str:
        load_plugins()
        return ", ".join(self._entries)

    def resolve(self, reference: str, search: Sequence[str | Path] = ()) -> Resolved[T]:
        """Look ``reference`` up (see the module docstring); ``search``: folders searched first
        for import paths (a spec's folder)."""
        label, target = split_label(reference, self.kind)
        value = self.find(target)
        if value is not None:  # built in or registered (names come before import paths)
            return Resolved(label, target, value, None, None)
        if label in self._paths and self._paths[label] == target:  # registered, named by path
            return Resolved(label, target, self._entries[label], target, _origin_of(target))
        if ":" not in target:
            same = [name for name in self._entries if name.lower() == target.lower()]
            if len(same) == 1:  # names are matched regardless of case (AdaHesScale)
                return Resolved(
                    same[0] if label == target else label,
                    same[0],
                    self._entries[same[0]],
                    None,
                    None,
                )
            lowered = {name.lower(): name for name in self._entries if not name.endswith("*")}
            close = difflib.get_close_matches(target.lower(), list(lowered), n=3, cutoff=0.75)
            hint = f" Did you mean {' or '.join(repr(lowered[c]) for c in close)}?" if close else ""
            raise ComponentError(
                f"Unknown {self.kind} '{target}'.{hint} Known {self.kind}s: {self.known()}; or "
                "name your own as package.module:attribute or path/to/file.py:attribute."
            )
        try:
            obj, path, origin = load_object(target, search)
        except ComponentError as error:
            raise ComponentError(f"{self.kind} {error}") from error.__cause__
        return Resolved(label, target, self._check(obj, f"{self.kind} '{target}'"), path, origin)

    def command_reference(self, resolved: Resolved[T]) -> tuple[str, str | None]:
        """How a command run in another process names ``resolved``: (reference, a folder to
        pass as ``--pythonpath``, or None). A component registered from Python goes by the
        import path recorded for it (``label=path``); without one, by its bare name, which
        only this process knows (see ``local_only``)."""
        path, origin = resolved.path, resolved.origin
        if path is None and self.user_path(resolved.target) is not None:
            path = self.user_path(resolved.target)
            origin = _origin_of(path)
        if path is None:
            return _labeled(resolved.label, resolved.target), None
        return _labeled(resolved.label, path), origin

    def local_only(self, resolved: Resolved[T]) -> bool:
        """Whether only this process can find ``resolved``: registered from Python without an
        import path (a lambda, a function defined in another, an interactive session)."""
        name = resolved.target
        return resolved.path is None and name in self._paths and self._paths[name] is None


def _labeled(label: str, target: str) -> str:
    return target if label == target else f"{label}={target}"


def split_label(reference: str, kind: str = "component") -> tuple[str, str]:
    """``'label=target'`` -> ``('label', 'target')``; a reference without a label is its own."""
    if not isinstance(reference, str) or not reference.strip():
        raise ComponentError(f"A {kind} reference must be a non-empty string, got {reference!r}.")
    label, sep, target = reference.partition("=")
    if not sep:
        return reference, reference
    if not label.strip() or not target.strip():
        raise ComponentError(
            f"{kind} '{reference}': expected LABEL=REFERENCE with both parts non-empty."
        )
    return label.strip(), target.strip()


# importing ------------------------------------------------------------------------------------


def _searched(search: Sequence[str | Path]) -> list[str]:
    return [str(Path(d).resolve()) for d in search] + [os.getcwd()]


def put_on_sys_path(folders: Sequence[str]) -> None:
    """Put ``folders`` at the front of sys.path, in order (each once)."""
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def load_object(target: str, search: Sequence[str | Path] = ()) -> tuple[Any, str, str | None]:
    """(object, path, origin) of ``target`` (``package.module:attribute`` or
    ``path/file.py:attribute``): ``path`` is ``target`` with a file's path made absolute (so
    that it imports from any folder), ``origin`` the folder another process must put on
    sys.path to import a module (None when it is installed, or for a file)."""
    location, _, attribute = target.rpartition(":")
    if not location or not attribute:
        raise ComponentError(
            f"'{target}' is not an import path: expected package.module:attribute or "
            "path/to/file.py:attribute."
        )
    if _is_file(location):
        module = _import_file(location, target, search)
        path, origin = f"{module.__file__}:{attribute}", None
    else:
        module, origin = _import_module(location, target, search)
        path = target
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            public = [name for name in dir(module) if not name.startswith("_")]
            close = difflib.get_close_matches(attribute, public, n=3)
            names = close or _public_names(module)
            has = f" Did you mean: {', '.join(close)}?" if close else ""
            has = has or (f" It defines: {', '.join(names)}." if names else "")
            raise ComponentError(
                f"'{target}': {_describe_module(module)} has no attribute '{attribute}'.{has}"
            ) from None
    return obj, path, origin


def _is_file(location: str) -> bool:
    return location.endswith(".py") or "/" in location or os.sep in location


def _origin_of(path: str) -> str | None:
    location = path.rpartition(":")[0]
    return None if _is_file(location) else _origin(location.split(".")[0])


def _import_module(location: str, target: str, search: Sequence[str | Path]):
    if not all(part.isidentifier() for part in location.split(".")):
        raise ComponentError(
            f"'{target}': '{location}' is neither a module name (package.module) nor a .py file."
        )
    folders = _searched(search)
    put_on_sys_path(folders)
    try:
        module = importlib.import_module(location)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if location == missing or location.startswith(missing + "."):
            raise ComponentError(
                f"'{target}': no module named '{missing}'. Searched: {', '.join(folders)}, then "
                "--pythonpath and PYTHONPATH (and installed packages)."
            ) from None
        raise ComponentError(f"'{target}': importing {location} failed: {error}") from error
    except Exception as error:
        raise ComponentError(
            f"'{target}': importing {location} raised {type(error).__name__}: {error}"
        ) from error
    return module, _origin(location.split(".")[0])


def _import_file(location: str, target: str, search: Sequence[str | Path]):
    if not location.endswith(".py"):
        raise ComponentError(f"'{target}': '{location}' is not a Python file (*.py).")
    given = Path(location).expanduser()
    folders = [Path(d) for d in _searched(search)]
    candidates = [given] if given.is_absolute() else [d / given for d in folders]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        where = ", ".join(str(p) for p in candidates)
        raise ComponentError(f"'{target}': no file {location} (looked for {where}).")
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    name = f"{FILE_MODULE_PREFIX}{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    put_on_sys_path([str(path.parent)])
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as error:
        del sys.modules[name]
        if not isinstance(error, Exception):
            raise
        raise ComponentError(
            f"'{target}': importing {path} raised {type(error).__name__}: {error}"
        ) from error
    return module


def _describe_module(module: Any) -> str:
    file = getattr(module, "__file__", None)
    name = module.__name__
    if name.startswith(FILE_MODULE_PREFIX) and file:
        return str(file)
    return f"module '{name}'" + (f" ({file})" if file else "")


def _public_names(module: Any, limit: int = 12) -> list[str]:
    """Callables the module defines itself (for 'did you mean' messages)."""
    names = [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and callable(value)
        and getattr(value, "__module__", None) == module.__name__
    ]
    return names[:limit] + (["..."] if len(names) > limit else [])


def _installed_folders() -> set[str]:
    paths = sysconfig.get_paths()
    folders = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    folders |= set(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        folders.add(site.getusersitepackages())
    return {str(Path(f).resolve()) for f in folders}


def _origin(top: str) -> str | None:
    """The sys.path folder top-level module ``top`` was imported from, if another process may
    lack it (None for installed packages, the standard library and hesscale itself)."""
    module = sys.modules.get(top)
    if module is None or top == "hesscale":
        return None
    file = getattr(module, "__file__", None)
    if file:
        path = Path(file).resolve()
        folder = path.parent.parent if path.name == "__init__.py" else path.parent
    else:  # a namespace package
        locations = list(getattr(module, "__path__", []))
        if not locations:
            return None
        folder = Path(locations[0]).resolve().parent
    return None if str(folder) in _installed_folders() else str(folder)


def importable_path(obj: Any, namespaces: Sequence[Mapping[str, Any]] = ()) -> str | None:
    """An import path that gives ``obj`` back in a new process, or None if there is none (a
    lambda, a function defined inside another, an object of an interactive session).

    Functions and classes are found where they are defined; other objects (a LearnerSpec, a
    partial) under a name bound to them in one of ``namespaces`` (modules' globals). Objects
    of the main script are named by its file path (``/path/script.py:name``)."""
    candidates: list[tuple[str, str]] = []
    for namespace in namespaces:
        if isinstance(namespace.get("__name__"), str):
            candidates += [
                (namespace["__name__"], name)
                for name, value in namespace.items()
                if value is obj and not name.startswith("_")
            ]
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(module_name, str) and isinstance(qualname, str) and "<" not in qualname:
        candidates.append((module_name, qualname))
    for module_name, attribute in candidates:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        try:
            value: Any = module
            for part in attribute.split("."):
                value = getattr(value, part)
        except AttributeError:
            continue
        if value is not obj:
            continue
        scripted = module_name in ("__main__", "__mp_main__")
        if scripted or module_name.startswith(FILE_MODULE_PREFIX):
            file = getattr(module, "__file__", None)
            if file and Path(file).is_file():
                return f"{Path(file).resolve()}:{attribute}"
            continue
        return f"{module_name}:{attribute}"
    return None


def signature_accepts(
    factory: Callable[..., Any], args: Sequence[Any], options: Mapping[str, Any]
) -> str | None:
    """None if ``factory(*args, **options)`` binds; else why not (for error messages)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: cannot tell
        return None
    try:
        signature.bind(*args, **options)
    except TypeError as error:
        return f"{error} (its signature: {signature})"
    return None


def describe_object(obj: Any) -> str:
    """What ``obj`` is, in words, for error messages."""
    if inspect.ismodule(obj):
        return f"the module '{obj.__name__}'"
    if inspect.isclass(obj):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        return f"the function {getattr(obj, '__qualname__', obj)}"
    text = repr(obj)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"an instance of {type(obj).__qualname__} ({text})"
