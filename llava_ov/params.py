"""Reading ``params.yaml`` and switching profiles.

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

import yaml
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


def load_params(root: Path | None = None) -> dict:
    """The whole of ``params.yaml`` as a dict."""
    root = root or project_root()
    with open(root / PARAMS_FILE) as f:  # YAML 1.2 like DVC: `1e-05` is a float, as ruamel writes it
        return YAML(typ="safe", pure=True).load(f) or {}


def section(name: str, root: Path | None = None) -> dict:
    """One top-level group of ``params.yaml`` (the unit a DVC stage declares in ``params:``)."""
    params = load_params(root)
    if name not in params:
        raise KeyError(f"{PARAMS_FILE} has no section {name!r}; sections: {sorted(params)}")
    return params[name]


def deep_merge(base: dict, overlay: dict) -> dict:
    """``base`` with ``overlay`` merged in recursively (mappings merge, anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def available_profiles(root: Path | None = None) -> list[str]:
    root = root or project_root()
    return sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))


def apply_profile(name: str, root: Path | None = None) -> dict:
    """Rewrite ``params.yaml`` with profile ``name`` applied over the current values; returns the new params.

    The file is edited in place with a round-trip YAML parser, so comments and key order survive and switching
    back to ``tiny`` restores the committed file byte for byte.
    """
    root = root or project_root()
    overlay_path = root / PROFILES_DIR / f"{name}.yaml"
    if not overlay_path.exists():
        raise ValueError(f"unknown profile {name!r}; available: {available_profiles(root)}")
    rt = YAML()
    rt.width = 110
    rt.indent(mapping=2, sequence=4, offset=2)
    with open(root / PARAMS_FILE) as f:
        doc = rt.load(f)
    # Reset every profile-dependent key to tiny first, so profiles do not leak into each other.
    for layer in (root / PROFILES_DIR / "tiny.yaml", overlay_path):
        _merge_in_place(doc, yaml.safe_load(layer.read_text()) or {})
    doc["profile"] = name
    with open(root / PARAMS_FILE, "w") as f:
        rt.dump(doc, f)
    return load_params(root)


def _merge_in_place(doc: dict, overlay: dict) -> None:
    """Merge ``overlay`` into ``doc``; non-empty mappings merge key by key, anything else (``{}`` too) replaces."""
    for key, value in overlay.items():
        if isinstance(value, dict) and value and isinstance(doc.get(key), dict):
            _merge_in_place(doc[key], value)
        else:
            doc[key] = copy.deepcopy(value)


def get(params: dict, dotted: str, default: Any = None) -> Any:
    """Look up ``a.b.c`` in nested params."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
