"""Which project source files a module really runs, and one digest over them: the code part of a cache key.

A cache whose key names its code by a hand-written list of files goes stale the day a result starts to depend on a
module outside the list (an answer normaliser, the system prompt). Here the list is derived: the module's imports,
walked transitively within the project. The same walk checks that every DVC stage declares as ``deps:`` exactly the
modules its script imports (``tests/test_incremental.py``), since DVC reruns a stage only when a listed file changes.

The walk is static (``ast``): it sees every ``import`` statement in a file, including ones inside functions (lazy
imports run too), and follows only modules of this project. Package ``__init__.py`` files run whenever a submodule
is imported. One whose body is only a docstring cannot change what a stage computes, so it is left out; one with
code (``llava_ov/__init__.py`` holds the version that every ``artifact.json`` records) counts like any module.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import xxhash

PACKAGES = ("llava_ov", "stages")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Third-party code whose upgrade can change a cached number: tokenisation, image decoding, the model's kernels.
NUMERIC_LIBRARIES = ("numpy", "pillow", "tokenizers", "torch", "transformers")


def module_file(root: Path, name: str) -> Path | None:
    """The file that defines module ``name`` under ``root``, or None if it is not a project module."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_trivial_init(path: Path) -> bool:
    """An ``__init__.py`` whose body is at most a docstring (and ``from __future__`` imports)."""
    body = ast.parse(path.read_text()).body
    return all((isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str))
               or (isinstance(n, ast.ImportFrom) and n.module == "__future__") for n in body)


def _imported_names(path: Path, module: str) -> set[str]:
    """Module names a file imports anywhere (``from a import b`` yields ``a`` and the candidate ``a.b``)."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb level-1 packages from this module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(root: Path, module: str) -> set[str]:
    """Project files (paths relative to ``root``) that ``import module`` runs, package inits with code included."""
    seen: set[str] = set()
    files: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        for mod in _with_parents(name):  # importing a.b.c runs a/__init__, a/b/__init__, then a/b/c
            if mod in seen:
                continue
            seen.add(mod)
            path = module_file(root, mod)
            if path is None:
                continue
            if path.name == "__init__.py" and _is_trivial_init(path):
                continue
            files.add(path.relative_to(root).as_posix())
            todo.extend(_imported_names(path, mod))
    return files


@lru_cache(maxsize=1)
def _library_versions() -> tuple[tuple[str, str], ...]:
    return tuple((name, version(name)) for name in NUMERIC_LIBRARIES)


def code_digest(*modules: str, root: Path | None = None) -> str:
    """xxh3-128 over every project file that importing ``modules`` runs (sorted paths, sizes and bytes) and the
    versions of :data:`NUMERIC_LIBRARIES`: any edit to code a result depends on gives another digest."""
    root = root or PROJECT_ROOT
    h = xxhash.xxh3_128()
    for rel in sorted(set().union(*(import_closure(root, m) for m in modules))):
        data = (root / rel).read_bytes()
        h.update(rel.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    for name, ver in _library_versions():
        h.update(f"{name}=={ver}\0".encode())
    return h.hexdigest()
