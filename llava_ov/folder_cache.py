"""A folder of cached *folders* by key, for results too large to re-hash on every hit (ingest's converted files).

:class:`~llava_ov.file_cache.FileCache` re-reads an entry to check its seal on every hit. A converted source file
of the released data is up to ~1 GB and there are ~10,000 of them: checking them that way would read ~10 TB on
every run. Here an entry's seal records (size, mtime_ns, xxh3-128) per file, and a hit costs one ``stat`` per file:
a file whose size and mtime are the sealed ones is taken as sealed (the bet git and DVC make); any other is
re-hashed, and a mismatch drops the entry (recomputed, never served). Entries are built in a temporary folder,
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

from llava_ov.artifacts import digest_file, owner_tag, writer_alive

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
        if _files(folder) == sorted(sealed) and all(self._intact(folder / rel, *sealed[rel]) for rel in sealed):
            return folder
        seal.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return None

    @staticmethod
    def _intact(path: Path, size: int, mtime_ns: int, digest: str) -> bool:
        st = path.stat()
        return (st.st_size, st.st_mtime_ns) == (size, mtime_ns) or (st.st_size == size and digest_file(path) == digest)

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """A temporary folder to build the entry in; stored and sealed when the block ends without error."""
        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        self._remove_stale()
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{owner_tag()}-"))
        try:
            yield tmp
            folder = self.entry(key)
            shutil.rmtree(folder, ignore_errors=True)  # an unsealed or dropped leftover of this key
            os.replace(tmp, folder)
            seal = {rel: [(st := (folder / rel).stat()).st_size, st.st_mtime_ns, digest_file(folder / rel)]
                    for rel in _files(folder)}
            seal_tmp = tmp.with_name(tmp.name + _SEAL)
            seal_tmp.write_text(json.dumps(seal, sort_keys=True))
            os.replace(seal_tmp, folder.with_name(key + _SEAL))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _remove_stale(self) -> None:
        for path in Path(self.root).glob(".tmp-*"):
            pid, _, rest = path.name[len(".tmp-"):].partition("-")
            if not pid.isdigit() or writer_alive(int(pid), rest.partition("-")[0]):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
