"""Content-addressed cache of evaluation results.

One JSON file per key, ``<root>/<key>.json``, where a key joins content digests. A checkpoint's results live
under ``<checkpoint>-<task>-<code>`` (checkpoint folder bytes, pinned task, evaluator source); the blind baseline's
answer table under ``blind-<ingest>-<code>``. No part is a path or a time, so a new checkpoint written to the same
folder, a changed task or changed scoring/model code each get a new key: stale answers are never served, and an
unchanged pair is read back instead of recomputed. Files are written atomically; an unreadable file counts as a
miss and is rewritten.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from llava_ov.artifacts import write_json


def cache_key(*parts: str) -> str:
    return "-".join(parts)


@dataclass
class ResultCache:
    root: Path
    hits: int = 0
    misses: int = 0

    def path(self, key: str) -> Path:
        return Path(self.root) / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        if path.is_file():
            try:
                result = json.loads(path.read_text())
                self.hits += 1
                return result
            except json.JSONDecodeError as e:
                print(f"eval cache: {path} is not valid JSON ({e}); recomputing it", file=sys.stderr)
        self.misses += 1
        return None

    def put(self, key: str, result: dict) -> None:
        write_json(self.path(key), result)
