"""Helpers for tests that need a scratch copy of the project (end-to-end, incrementality, push/pull)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIT_ID = ["-c", "user.name=llava-ov tests", "-c", "user.email=tests@llava-ov.invalid"]


def env() -> dict:
    e = dict(os.environ)
    e.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0",
             TOKENIZERS_PARALLELISM="false", PATH=f"{BIN}{os.pathsep}{e.get('PATH', '')}")
    e.pop("LLAVA_OV_ROOT", None)
    return e


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in a project copy; on failure the assertion shows its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}) in {cwd}\n"
                             f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def git(cwd: Path, *args: str) -> str:
    return run(["git", *GIT_ID, *args], cwd).stdout


def copy_project(dest: Path) -> Path:
    """Copy the project's source files (what a fresh clone has, plus uncommitted work) into a new git repo."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "project copy")
    return dest


def stages_that_would_run(cwd: Path) -> list[str]:
    """Names of the stages `dvc repro` would run now (including those downstream of a change), in order."""
    out = run(["dvc", "repro", "--dry"], cwd).stdout
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")]
