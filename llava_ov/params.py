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
    with open(root / PARAMS_FILE) as f:
        return yaml.safe_load(f) or {}


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
    """Rewrite ``params.yaml`` with profile ``name`` applied over the current values; returns the new params."""
    root = root or project_root()
    overlay_path = root / PROFILES_DIR / f"{name}.yaml"
    if not overlay_path.exists():
        raise ValueError(f"unknown profile {name!r}; available: {available_profiles(root)}")
    with open(overlay_path) as f:
        overlay = yaml.safe_load(f) or {}
    tiny = yaml.safe_load((root / PROFILES_DIR / "tiny.yaml").read_text()) or {}
    # Reset every profile-dependent key to tiny first, so profiles do not leak into each other.
    params = deep_merge(deep_merge(load_params(root), tiny), overlay)
    params["profile"] = name
    dump_params(params, root)
    return params


def dump_params(params: dict, root: Path | None = None) -> None:
    root = root or project_root()
    text = yaml.safe_dump(params, sort_keys=False, default_flow_style=None, width=110)
    (root / PARAMS_FILE).write_text(text)


def get(params: dict, dotted: str, default: Any = None) -> Any:
    """Look up ``a.b.c`` in nested params."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
