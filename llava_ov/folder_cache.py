"""A folder of cached *folders* by key, for results too large to re-hash on every hit (ingest's converted files).

:class:`~llava_ov.file_cache.FileCache` caches one file per key; a converted source file of the released data is a
shard plus its index rows, ids and rejects, so this caches a folder per key, every file sealed the same way
(:func:`~llava_ov.file_cache.intact`: a hit costs one ``stat`` per file; a mismatch drops the entry, recomputed,
never served). Entries are built in a temporary folder,
renamed into place and then sealed, so a half-built entry is never a hit; a killed builder's temporary is removed
by the next builder, never a running one's (names carry pid and host, as artifact temporaries do).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from llava_ov.file_cache import intact, scratch, seal_of, write_seal

_SEAL = ".seal.json"


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@dataclass(frozen=True)
class FolderCache:
    """Folders ``<root>/<key>/``, each sealed in ``<root>/<key>.seal.json``."""

    root: Path

    def entry(self, key: str) -> Path:
        return Path(self.root) / key

    def get(self, key: str) -> Path | None:
        """The entry if stored and every file still matches its seal; otherwise drop it and miss."""
        folder, seal = self.entry(key), self.entry(key).with_name(key + _SEAL)
        if not (folder.is_dir() and seal.is_file()):
            return None
        sealed = json.loads(seal.read_text())
        if _files(folder) == sorted(sealed) and all(intact(folder / rel, sealed[rel]) for rel in sealed):
            return folder
        seal.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return None

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """A temporary folder to build the entry in; stored and sealed when the block ends without error."""
        tmp = scratch(Path(self.root), tempfile.mkdtemp)
        try:
            yield tmp
            folder = self.entry(key)
            shutil.rmtree(folder, ignore_errors=True)  # an unsealed or dropped leftover of this key
            os.replace(tmp, folder)
            seal = {rel: seal_of(folder / rel) for rel in _files(folder)}
            write_seal(folder.with_name(key + _SEAL), seal, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
