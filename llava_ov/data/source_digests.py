"""Content digests of the released source files, re-hashed only when a file's size or mtime changed.

``ingest`` caches each converted source file under its content digest, and the released data is ~10 TB: hashing
all of it on every run would cost hours of disk reads for nothing. ``sources.json`` in the cache folder records
(size, mtime_ns, digest) per file; a file whose size and mtime_ns are unchanged keeps its recorded digest (the bet
git and DVC make too), anything else is re-hashed by its engine task, in parallel with the others. A file that
changes while its task reads it is caught by the task (it checks size and mtime again after converting).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from llava_ov.artifacts import write_json

NAME = "sources.json"


@dataclass
class SourceDigests:
    """``<cache>/sources.json``: source file (relative to the project root) -> [size, mtime_ns, digest]."""

    path: Path
    entries: dict[str, list] = field(default_factory=dict)
    changed: bool = False

    @classmethod
    def load(cls, cache_root: Path) -> "SourceDigests":
        path = cache_root / NAME
        return cls(path, json.loads(path.read_text()) if path.is_file() else {})

    def known(self, name: str, size: int, mtime_ns: int) -> str | None:
        """The recorded digest of ``name`` if its size and mtime are the recorded ones, else None (hash it)."""
        entry = self.entries.get(name)
        return entry[2] if entry is not None and entry[:2] == [size, mtime_ns] else None

    def record(self, name: str, size: int, mtime_ns: int, digest: str) -> None:
        if self.entries.get(name) != [size, mtime_ns, digest]:
            self.entries[name] = [size, mtime_ns, digest]
            self.changed = True

    def save(self, names: set[str]) -> None:
        """Write the entries of ``names`` (the files of this run: removed files are forgotten) if anything changed."""
        kept = {name: entry for name, entry in self.entries.items() if name in names}
        if self.changed or kept.keys() != self.entries.keys():
            write_json(self.path, kept)
