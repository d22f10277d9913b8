"""``llava-ov verify``: check built artifacts and find what killed stages left beside them.

An artifact is checked like a reader would open it (``artifact.json`` present, the files and sizes it lists), and
with ``digests`` its content digest is recomputed too (reads every byte). Leftovers are temporary and replaced
folders (``.tmp-*``, ``.old-*``) whose writer is gone or unknown: a stage removes its own on its next run, but one
that never runs again (or one written by an older llava-ov, which recorded no writer) would stay forever.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from llava_ov.artifacts import META_NAME, ArtifactError, Leftover, leftovers, open_artifact


@dataclass
class Report:
    """One line per artifact checked (``ok``) and per problem found (``problems``); ``removed`` with ``clean``."""

    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check_artifact(path: Path, digests: bool, report: Report) -> None:
    try:
        meta = json.loads((path / META_NAME).read_text())
        art = open_artifact(path, meta.get("kind"), meta.get("schema"), verify=digests)
    except (ArtifactError, json.JSONDecodeError) as e:
        report.problems.append(f"BROKEN {path}: {e}")
        return
    what = f"digest {art.digest} recomputed" if digests else "files and sizes as recorded"
    report.ok.append(f"OK {path} ({art.kind} schema {art.meta['schema']}, {what})")


def _check_leftover(lo: Leftover, clean: bool, report: Report) -> None:
    if lo.alive:
        return  # a writer is filling it right now
    why = "its writer is no longer running" if lo.alive is False else "its name records no writer: an older llava-ov wrote it"
    if clean:
        shutil.rmtree(lo.path, ignore_errors=True)
        report.removed.append(f"removed {lo.path} ({why})")
    else:
        report.problems.append(f"LEFTOVER {lo.path}: {_size(lo.path) / 1e6:.1f} MB, {why}; "
                               f"`llava-ov verify --clean` removes it")


def verify(paths: list[Path], digests: bool = False, clean: bool = False) -> Report:
    """Check each path: an artifact folder, or a folder of artifacts (every artifact in it and its leftovers)."""
    report = Report()
    for path in paths:
        if not path.is_dir():
            report.problems.append(f"MISSING {path}: no such folder (nothing built yet?)")
            continue
        if (path / META_NAME).is_file():
            _check_artifact(path, digests, report)
            found = leftovers(path.parent, path.name)
        else:
            for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if (child / META_NAME).is_file():
                    _check_artifact(child, digests, report)
                else:
                    report.problems.append(f"BROKEN {child}: no {META_NAME} (partial, or not written by llava-ov)")
            found = leftovers(path)
        for lo in found:
            _check_leftover(lo, clean, report)
    return report
