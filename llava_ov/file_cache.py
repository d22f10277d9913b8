"""A folder of cached files by key, whose hits are checked before they are served.

Stages reuse expensive per-shard work across runs (packed shards, lengths and concept-index parts). A cache can
serve a stale or damaged result in two ways, and this class closes both:

- the key must name everything the bytes depend on; that is the caller's part (inputs' digests, params, and the
  code that computes them from :func:`llava_ov.code_digest.code_digest`);
- an entry must be the complete bytes once stored: an entry is written under a temporary name and renamed into
  place, then sealed in ``<key><suffix>.seal`` with its (size, mtime_ns, xxh3-128). A hit whose size and mtime are
  the sealed ones costs one ``stat`` (the bet git and DVC make; re-hashing 1 GB packed shards on every hit would
  read the whole artifact per run); any other is re-hashed, and a mismatch (cut short by a full disk, edited,
  half-copied by hand) drops the entry: it is recomputed, never served.

Temporaries carry their writer's pid and host like artifact temporaries, so a killed writer's are removed by the
next writer (and never a running one's).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from llava_ov.artifacts import digest_file, owner_tag, writer_alive

_SEAL = ".seal"


def seal_of(path: Path) -> list:
    """What a cache seals a file with: [size, mtime_ns, xxh3-128]."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, digest_file(path)]


def intact(path: Path, sealed: list) -> bool:
    """Whether ``path`` still holds its sealed bytes: same size and mtime (one ``stat``), else same digest."""
    size, mtime_ns, digest = sealed
    st = path.stat()
    return (st.st_size, st.st_mtime_ns) == (size, mtime_ns) or (st.st_size == size and digest_file(path) == digest)


def link_or_copy(src: Path, dst: Path) -> None:
    """Put a cached file into an artifact: a hard link (no bytes copied; cache entries and artifact files are only
    ever replaced, never written in place), or a copy where the filesystem cannot link (another device)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def remove_stale(root: Path) -> None:
    """Remove the temporaries (``.tmp-<pid>-<host>-...``, files or folders) of dead writers under ``root``."""
    for path in Path(root).glob(".tmp-*"):
        pid, _, rest = path.name[len(".tmp-"):].partition("-")
        if not pid.isdigit() or writer_alive(int(pid), rest.partition("-")[0]):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def scratch(root: Path, make: Callable[..., str], suffix: str = "") -> Path:
    """A new temporary entry (file or folder, by ``make``: ``tempfile.mkstemp``/``mkdtemp``) in a cache ``root``,
    named for its writer; dead writers' temporaries are removed first."""
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    made = make(dir=root, prefix=f".tmp-{owner_tag()}-", suffix=suffix)
    if isinstance(made, tuple):  # mkstemp: (fd, name)
        os.close(made[0])
        made = made[1]
    return Path(made)


def write_seal(seal: Path, value, tmp: Path) -> None:
    """Write a seal beside a writer's temporary ``tmp`` and rename it to ``seal``: a seal is whole or absent."""
    seal_tmp = tmp.with_name(tmp.name + ".seal-tmp")
    seal_tmp.write_text(json.dumps(value, sort_keys=True))
    os.replace(seal_tmp, seal)


@dataclass(frozen=True)
class FileCache:
    """Files ``<root>/<key><suffix>`` (``suffix`` e.g. ``.tar``, ``.npz``), each sealed."""

    root: Path
    suffix: str

    def entry(self, key: str) -> Path:
        return Path(self.root) / f"{key}{self.suffix}"

    def get(self, key: str) -> Path | None:
        """The entry's path if it is stored and its bytes still match its seal; otherwise drop it and miss."""
        path = self.entry(key)
        seal = path.with_name(path.name + _SEAL)
        if not (path.is_file() and seal.is_file()):
            return None
        if intact(path, json.loads(seal.read_text())):
            return path
        path.unlink(missing_ok=True)
        seal.unlink(missing_ok=True)
        return None

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        """A temporary path to write the entry's bytes to; stored and sealed when the block ends without error."""
        tmp = scratch(Path(self.root), tempfile.mkstemp, self.suffix)
        try:
            yield tmp
            path = self.entry(key)
            os.replace(tmp, path)
            write_seal(path.with_name(path.name + _SEAL), seal_of(path), tmp)
        finally:
            tmp.unlink(missing_ok=True)
