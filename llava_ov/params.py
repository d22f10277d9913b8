"""Reading ``params.yaml`` and switching profiles; every YAML file of the project is read here, as DVC reads it.

DVC reads ``params.yaml`` as YAML 1.2 (ruamel.yaml's safe loader): ``1e-5`` is a float and ``yes`` a string. A
YAML 1.1 reader (PyYAML) would see the string ``'1e-5'`` and the boolean ``true``, so a stage would not compute with
the value DVC hashed. :func:`read_yaml` is the one reader for params, profile overlays, eval task specs and lock files.

``params.yaml`` is the embedded default profile (``tiny``). The other profiles (``smoke``, ``4b``, ``8b``) are
overlays in ``profiles/<name>.yaml`` holding only the keys that differ. ``profiles/tiny.yaml`` holds the tiny
values of every key any overlay touches, so switching back to ``tiny`` restores ``params.yaml`` exactly.
Switching rewrites ``params.yaml`` in place, so DVC sees exactly the changed keys.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

PARAMS_FILE = "params.yaml"
PROFILES_DIR = "profiles"


def project_root() -> Path:
    """The project root: ``LLAVA_OV_ROOT`` if set, else the nearest parent of the cwd holding ``dvc.yaml``."""
    env = os.environ.get("LLAVA_OV_ROOT")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for p in (here, *here.parents):
        if (p / "dvc.yaml").exists():
            return p
    return here


def parse_yaml(text: str) -> Any:
    """YAML text as plain Python values, parsed like DVC parses params (YAML 1.2; an empty text is ``{}``)."""
    return YAML(typ="safe").load(text) or {}


def read_yaml(path: Path | str) -> Any:
    """A YAML file as plain Python values (see :func:`parse_yaml`)."""
    return parse_yaml(Path(path).read_text())


def load_params(root: Path | None = None) -> dict:
    """The whole of ``params.yaml`` as a dict."""
    return read_yaml((root or project_root()) / PARAMS_FILE)


def section(name: str, root: Path | None = None) -> dict:
    """One top-level group of ``params.yaml`` (the unit a DVC stage declares in ``params:``)."""
    params = load_params(root)
    if name not in params:
        raise KeyError(f"{PARAMS_FILE} has no section {name!r}; sections: {sorted(params)}")
    return params[name]


def available_profiles(root: Path | None = None) -> list[str]:
    root = root or project_root()
    return sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))


def apply_profile(name: str, root: Path | None = None) -> dict:
    """Rewrite ``params.yaml`` with profile ``name`` applied over the current values; returns the new params.

    The file is edited in place with a round-trip YAML parser, so comments and key order survive and switching
    back to ``tiny`` restores the committed file byte for byte.
    """
    root = root or project_root()
    rt = YAML()
    rt.width = 110
    rt.indent(mapping=2, sequence=4, offset=2)
    with open(root / PARAMS_FILE) as f:
        doc = rt.load(f)
    # Reset every profile-dependent key to tiny first, so profiles do not leak into each other.
    for layer in [read_yaml(root / PROFILES_DIR / "tiny.yaml"), *profile_layers(name, root)]:
        _merge_in_place(doc, layer)
    doc["profile"] = name
    with open(root / PARAMS_FILE, "w") as f:
        rt.dump(doc, f)
    return load_params(root)


def profile_layers(name: str, root: Path, seen: tuple[str, ...] = ()) -> list[dict]:
    """The overlays a profile applies, base first: a profile may say ``extends: <profile>`` and hold only the keys
    it changes (e.g. another base LLM on the 4b recipe)."""
    path = root / PROFILES_DIR / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown profile {name!r}; available: {available_profiles(root)}")
    if name in seen:
        raise ValueError(f"profiles extend each other in a cycle: {' -> '.join((*seen, name))}")
    overlay = read_yaml(path)
    base = overlay.pop("extends", None)
    return [*(profile_layers(base, root, (*seen, name)) if base else []), overlay]


def _merge_in_place(doc: dict, overlay: dict) -> None:
    """Merge ``overlay`` into ``doc``; non-empty mappings merge key by key, anything else (``{}`` too) replaces."""
    for key, value in overlay.items():
        if isinstance(value, dict) and value and isinstance(doc.get(key), dict):
            _merge_in_place(doc[key], value)
        else:
            doc[key] = copy.deepcopy(value)

