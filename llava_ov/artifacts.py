"""Content-addressed, atomically written stage artifacts.

Every stage output is a folder with an ``artifact.json`` that says what it is (``kind``, ``schema``), what it
was built from (``inputs`` digests, ``params`` read, ``code`` version) and a ``digest`` of its content. The
folder is written under a temporary name beside its target and renamed into place only when complete, so a
killed stage never leaves a half artifact that a later stage could read. The temporary's name records its writer
(pid and a hash of the host name), so the next run of the same stage can remove what a killed writer left (a
``kill -9`` runs no clean-up) without ever touching a folder that a running writer still fills.

The digest is xxh3-128 over the sorted relative paths and bytes of every file except ``artifact.json``: it
does not depend on timestamps, on the order files were written or on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import xxhash

from llava_ov import __version__

META_NAME = "artifact.json"
_CHUNK = 1 << 22
_HOST = xxhash.xxh32_hexdigest(socket.gethostname().encode())
# .tmp-<artifact>-<pid>-<host>-<random> (being written) and .old-<artifact>-<pid>-<host>-<random> (being replaced)
_LEFTOVER = re.compile(r"\.(?:tmp|old)-(?P<artifact>.+)-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-z_]+")


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete, or not the kind/schema a reader expects."""


def _files(root: Path) -> list[str]:
    """Sorted relative POSIX paths of every regular file under ``root`` except the metadata file."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != META_NAME:
                out.append(rel)
    return sorted(out)


def digest_dir(root: Path | str) -> str:
    """xxh3-128 hex digest over the sorted relative paths and contents of a folder's files."""
    return digest_tree(root)[0]


def digest_tree(root: Path | str) -> tuple[str, dict[str, str]]:
    """The folder digest of :func:`digest_dir` and every file's own xxh3-128, in one read of each file.

    The per-file digests go into ``artifact.json`` (``file_digests``), so a stage that caches work per shard of
    an upstream artifact keys it by that shard's content without reading the shard again.
    """
    root = Path(root)
    h = xxhash.xxh3_128()
    files = {}
    for rel in _files(root):
        data_path = root / rel
        h.update(rel.encode())
        h.update(b"\0")
        h.update(data_path.stat().st_size.to_bytes(8, "little"))
        own = xxhash.xxh3_128()
        with open(data_path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                own.update(chunk)
        files[rel] = own.hexdigest()
    return h.hexdigest(), files


def digest_file(path: Path | str) -> str:
    """xxh3-128 hex digest of one file's bytes."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_json(obj: Any) -> str:
    """xxh3-128 of a JSON value in canonical form (sorted keys, no whitespace)."""
    return xxhash.xxh3_128_hexdigest(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def write_json(path: Path | str, obj: Any) -> None:
    """Write JSON canonically (sorted keys, fixed indent, trailing newline) and atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, sort_keys=True, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class Artifact:
    """A complete artifact folder, opened and checked by :func:`open_artifact`."""

    path: Path
    meta: dict

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def digest(self) -> str:
        return self.meta["digest"]

    @property
    def stats(self) -> dict:
        return self.meta.get("stats", {})

    def file_digest(self, rel: str) -> str:
        """xxh3-128 of one file of the artifact, as recorded when it was written."""
        try:
            return self.meta["file_digests"][rel]
        except KeyError:
            raise ArtifactError(f"artifact {self.path} records no digest for {rel!r}: it was written before "
                                f"per-file digests existed or has no such file; rebuild it (dvc repro)") from None

    def __truediv__(self, rel: str) -> Path:
        return self.path / rel


def open_artifact(path: Path | str, kind: str, schema: int, verify: bool = False) -> Artifact:
    """Open an artifact for reading, refusing one that is missing, partial or of another kind/schema.

    The cheap check compares the files on disk with the list and sizes recorded at write time; ``verify``
    additionally recomputes the content digest.
    """
    path = Path(path)
    meta_path = path / META_NAME
    if not path.is_dir():
        raise ArtifactError(f"artifact {path} does not exist: build it first (dvc repro)")
    if not meta_path.is_file():
        raise ArtifactError(f"artifact {path} has no {META_NAME}: it is partial or was not written by llava-ov; "
                            f"delete it and rebuild (dvc repro)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"artifact {path}: {META_NAME} is not valid JSON ({e}); rebuild it") from e
    if meta.get("kind") != kind:
        raise ArtifactError(f"artifact {path} is of kind {meta.get('kind')!r}, expected {kind!r}")
    if meta.get("schema") != schema:
        raise ArtifactError(f"artifact {path} ({kind}) has schema {meta.get('schema')}, this code reads schema "
                            f"{schema}: rebuild it with this version (dvc repro)")
    recorded = meta.get("files", {})
    present = {rel: (path / rel).stat().st_size for rel in _files(path)}
    if present != recorded:
        missing = sorted(set(recorded) - set(present))
        extra = sorted(set(present) - set(recorded))
        changed = sorted(r for r in set(recorded) & set(present) if recorded[r] != present[r])
        raise ArtifactError(f"artifact {path} ({kind}) is incomplete or was edited: missing={missing[:5]} "
                            f"unexpected={extra[:5]} size-changed={changed[:5]}; rebuild it (dvc repro)")
    if verify and digest_dir(path) != meta["digest"]:
        raise ArtifactError(f"artifact {path} ({kind}): content digest does not match {META_NAME}; rebuild it")
    return Artifact(path=path, meta=meta)


def owner_tag() -> str:
    """``<pid>-<host hash>`` of this process: written into the names of its temporaries."""
    return f"{os.getpid()}-{_HOST}"


def writer_alive(pid: int, host: str) -> bool:
    """Whether the process that owns a temporary may still be running. Another host's pid says nothing here, so
    its writers count as alive; a reused pid keeps a dead writer's leftovers (the safe way to be wrong)."""
    if host != _HOST:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class Leftover:
    """A temporary (``.tmp-*``) or replaced (``.old-*``) folder beside the artifacts.

    ``alive`` is True while its writer may still run, False once that writer is provably gone, and None when the
    name records no writer (written by an older llava-ov).
    """

    path: Path
    artifact: str
    alive: bool | None


def leftovers(folder: Path | str, artifact: str | None = None) -> list[Leftover]:
    """The temporary and replaced folders in ``folder`` (only those of ``artifact`` if given), sorted by name."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not (path.name.startswith((".tmp-", ".old-")) and path.is_dir()):
            continue
        match = _LEFTOVER.fullmatch(path.name)
        if match:
            found.append(Leftover(path, match["artifact"], writer_alive(int(match["pid"]), match["host"])))
        else:
            found.append(Leftover(path, path.name[len(".tmp-"):].rpartition("-")[0], None))
    return [lo for lo in found if artifact is None or lo.artifact == artifact]


def _remove_stale(target: Path) -> None:
    """Remove what killed writers of ``target`` left beside it; leave a running writer's and an unknown owner's."""
    for lo in leftovers(target.parent, target.name):
        if lo.alive is False:
            shutil.rmtree(lo.path, ignore_errors=True)
            print(f"{target}: removed {lo.path.name}, left by a writer that is no longer running", file=sys.stderr)
        elif lo.alive is None:
            print(f"{target}: {lo.path.name} records no writer (an older llava-ov); remove it with "
                  f"`llava-ov verify --clean` when no stage is running", file=sys.stderr)


@dataclass
class ArtifactWriter:
    """Context manager that builds an artifact in a temporary folder and renames it into place on success.

    Usage::

        with ArtifactWriter("artifacts/ingest", "ingest", schema=1, params=p, inputs={"tok": tok}) as w:
            (w.dir / "data.parquet").write_bytes(...)
            w.stats["samples"] = n
        art = w.artifact
    """

    target: Path | str
    kind: str
    schema: int
    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, Artifact | str] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    dir: Path = field(init=False)
    artifact: Artifact | None = field(init=False, default=None)

    def __enter__(self) -> "ArtifactWriter":
        self.target = Path(self.target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.target)
        self.dir = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".tmp-{self.target.name}-{owner_tag()}-"))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        try:
            self._finish()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _finish(self) -> None:
        files = {rel: (self.dir / rel).stat().st_size for rel in _files(self.dir)}
        digest, file_digests = digest_tree(self.dir)
        meta = {
            "kind": self.kind,
            "schema": self.schema,
            "digest": digest,
            "files": files,
            "file_digests": file_digests,
            "inputs": {k: (v.digest if isinstance(v, Artifact) else v) for k, v in sorted(self.inputs.items())},
            "params": dict(self.params),
            "code": __version__,
            "stats": self.stats,
        }
        write_json(self.dir / META_NAME, meta)
        os.chmod(self.dir, 0o755)  # mkdtemp creates 0700; artifacts are shared read-only data
        if self.target.exists():
            old = self.dir.with_name(".old-" + self.dir.name[len(".tmp-"):])
            os.replace(self.target, old)
            os.replace(self.dir, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.dir, self.target)
        self.artifact = Artifact(path=self.target, meta=meta)


def iter_jsonl(path: Path | str) -> Iterator[dict]:
    """Yield the JSON objects of a JSON-lines file."""
    with open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def write_jsonl(path: Path | str, rows: list[dict]) -> None:
    """Write rows as JSON lines with sorted keys (byte-stable for the same rows in the same order)."""
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
