"""A folder of cached files by key, whose hits are checked before they are served.

Stages reuse expensive per-shard work across runs (packed shards, concept-index parts). A cache can serve a stale
or damaged result in two ways, and this class closes both:

- the key must name everything the bytes depend on; that is the caller's part (inputs' digests, params, and the
  code that computes them from :func:`llava_ov.code_digest.code_digest`);
- an entry must be the complete bytes once stored: an entry is written under a temporary name and renamed into
  place, then sealed with its content digest in ``<key><suffix>.xxh3``. A hit whose bytes no longer match its
  seal (cut short by a full disk, edited, half-copied by hand) is dropped and recomputed, never served.

Temporaries carry their writer's pid and host like artifact temporaries, so a killed writer's are removed by the
next writer (and never a running one's).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from llava_ov.artifacts import digest_file, owner_tag, writer_alive

_SEAL = ".xxh3"


@dataclass(frozen=True)
class FileCache:
    """Files ``<root>/<key><suffix>`` (``suffix`` e.g. ``.tar``, ``.npz``), each sealed with its digest."""

    root: Path
    suffix: str

    def entry(self, key: str) -> Path:
        return Path(self.root) / f"{key}{self.suffix}"

    def get(self, key: str) -> Path | None:
        """The entry's path if it is stored and its bytes still match its seal; otherwise drop it and miss."""
        path, seal = self.entry(key), self.entry(key).with_name(self.entry(key).name + _SEAL)
        if not (path.is_file() and seal.is_file()):
            return None
        if digest_file(path) == seal.read_text().strip():
            return path
        path.unlink(missing_ok=True)
        seal.unlink(missing_ok=True)
        return None

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """A temporary path to write the entry's bytes to; stored and sealed when the block ends without error."""
        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        self._remove_stale()
        fd, name = tempfile.mkstemp(dir=root, prefix=f".tmp-{owner_tag()}-", suffix=self.suffix)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            digest = digest_file(tmp)
            path = self.entry(key)
            os.replace(tmp, path)
            seal_tmp = tmp.with_name(tmp.name + _SEAL)
            seal_tmp.write_text(digest + "\n")
            os.replace(seal_tmp, path.with_name(path.name + _SEAL))
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_stale(self) -> None:
        for path in Path(self.root).glob(".tmp-*"):
            pid, _, rest = path.name[len(".tmp-"):].partition("-")
            host = rest.partition("-")[0]
            if pid.isdigit() and not writer_alive(int(pid), host):
                path.unlink(missing_ok=True)
