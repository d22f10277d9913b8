"""Per-shard results cached by content, so adding one shard of N recomputes only that shard's work.

A shard-parallel stage keys each shard's result by everything that decides it: the shard's content digest, the
digests of the other inputs the work reads (a tokenizer, an encoder), the params it uses and the digest of the code
that computes it. A hit is read back instead of recomputed; anything else that changes gives a new key, so a stale
result can never be served. Entries (files, or folders with ``suffix=""``) are written atomically (temporary name,
then rename), so a killed worker leaves no half entry, and workers on other nodes can share the folder over a
shared filesystem.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from llava_ov.artifacts import digest_json


@dataclass(frozen=True)
class ShardCache:
    """``cache/<stage>/<key><suffix>``; ``inputs`` and ``params`` are folded into every key."""

    root: Path
    code: str
    inputs: dict[str, str] = field(default_factory=dict)
    params: Any = None
    suffix: str = ".parquet"

    def key(self, shard_digest: str) -> str:
        return digest_json({"shard": shard_digest, "code": self.code, "inputs": self.inputs, "params": self.params})

    def path(self, shard_digest: str) -> Path:
        return self.root / f"{self.key(shard_digest)}{self.suffix}"

    def writer_path(self, shard_digest: str) -> Path:
        """A temporary path to write an entry to; :meth:`commit` moves it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=self.suffix)
        os.close(fd)
        return Path(tmp)

    def writer_dir(self) -> Path:
        """A temporary folder to build a folder entry in (``suffix=""``); :meth:`commit` moves it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-"))

    def commit(self, tmp: Path, shard_digest: str) -> Path:
        target = self.path(shard_digest)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (tmp.is_dir() and target.is_dir()):
                raise
            shutil.rmtree(tmp)  # another worker committed the same folder entry first: same key, same content
        return target


def code_digest(*modules: str) -> str:
    """Digest of the source files of the named modules (the code that decides a cached result)."""
    import importlib.util

    h = xxhash.xxh3_128()
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"module {name!r} not found")
        h.update(name.encode() + b"\0" + Path(spec.origin).read_bytes())
    return h.hexdigest()
