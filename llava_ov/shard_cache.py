"""Per-shard results cached by content, so adding one shard of N recomputes only that shard's work.

A shard-parallel stage keys each shard's result by everything that decides it: the shard's content digest, the
digests of the other inputs the work reads (a tokenizer, an encoder), the params it uses and the digest of the code
that computes it (:func:`llava_ov.code_digest.code_digest`). Entries live in a :class:`~llava_ov.file_cache.FileCache`
(written atomically, sealed with their digest, a damaged entry is a miss), so workers on other nodes can share the
folder over a shared filesystem and a stale or half-written result is never served.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_ov.artifacts import digest_json
from llava_ov.file_cache import FileCache


@dataclass(frozen=True)
class ShardCache:
    """``<root>/<key><suffix>`` per shard; ``code``, ``inputs`` and ``params`` are folded into every key."""

    root: Path
    code: str
    inputs: dict[str, str] = field(default_factory=dict)
    params: Any = None
    suffix: str = ".parquet"

    def key(self, shard_digest: str) -> str:
        return digest_json({"shard": shard_digest, "code": self.code, "inputs": self.inputs, "params": self.params})

    @property
    def files(self) -> FileCache:
        return FileCache(self.root, self.suffix)

    def get(self, shard_digest: str) -> Path | None:
        """The shard's cached result, if stored and intact."""
        return self.files.get(self.key(shard_digest))

    def writing(self, shard_digest: str) -> AbstractContextManager[Path]:
        """A temporary path to write the shard's result to; stored when the block ends without error."""
        return self.files.writing(self.key(shard_digest))
