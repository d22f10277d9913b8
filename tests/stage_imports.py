"""Which project source files a stage script really runs: its imports, walked transitively within the project.

DVC reruns a stage only when a file listed in its ``deps:`` changes, so a library module that a stage imports but
does not list is a correctness bug (edit it, and the stage's artifact silently goes stale), and a module listed but
never imported is a needless rerun. The walk is static (``ast``): it sees every ``import`` statement in a file,
including ones inside functions (lazy imports run too), and follows only modules of this project.

Package ``__init__.py`` files run whenever a submodule is imported. One whose body is only a docstring cannot
change what a stage computes, so it is left out; one with code (``llava_ov/__init__.py`` holds the version that
every ``artifact.json`` records, ``llava_ov/model/__init__.py`` imports the model) counts like any module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGES = ("llava_ov", "stages")


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


def stage_module(cmd: str) -> str:
    """The module a stage command runs: ``python -m stages.pack x`` and ``torchrun ... -m stages.train x``."""
    match = re.search(r"(?:^|\s)-m\s+(stages\.\w+)", cmd)
    if not match:
        raise ValueError(f"stage command {cmd!r} does not run a `-m stages.<name>` module")
    return match.group(1)


def covered(path: str, deps: list[str]) -> bool:
    """Whether a declared dep (the file itself or a folder holding it) covers ``path``."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)
