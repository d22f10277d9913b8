"""Content-addressed cache files of the concept stages (``cache/concept_vocabulary``, ``cache/concept_index``).

A file's name is the digest of everything its content depends on, so it is never stale, only unused; it is
written under a temporary name and renamed into place, so a killed writer leaves no half file that a later run
could take for a hit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def save_arrays(path: Path, arrays: dict[str, np.ndarray] | np.ndarray) -> None:
    """Atomically write one array (``.npy``) or several (``.npz``) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(arrays, dict):
                np.savez(f, **arrays)
            else:
                np.save(f, arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared like the artifacts
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
