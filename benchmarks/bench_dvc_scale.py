"""How DVC's bookkeeping scales with artifact size and file count.

Builds a scratch DVC project whose single stage outputs GB of synthetic shards, then times `dvc status` and
no-op `dvc repro` after the first hash. Layouts compared in the same run:

- `few large files`: the project's rule (tar shards up to ~1 GiB);
- `many small files`: the same bytes as one file per sample, the layout the rule forbids (scaled down in size,
  since hashing it in full is the slow part being shown).

Usage: python benchmarks/bench_dvc_scale.py [--gb 10] [--small-files 100000] [--small-mb 400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TARGET_STATUS_S = 2.0  # issue 8: `dvc status` stays under 2 s after the first hash


def _env() -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=_env(), check=True, capture_output=True)
    return time.perf_counter() - t0


def _dvc_version() -> str:
    out = subprocess.run(["dvc", "--version"], env=_env(), capture_output=True, text=True)
    return out.stdout.strip()


WRITE_LARGE = """
import os, sys
out, gb = sys.argv[1], float(sys.argv[2])
os.makedirs(out, exist_ok=True)
block = os.urandom(1 << 24)
n_files = max(1, int(gb))
per_file = int(gb * (1 << 30)) // n_files
for i in range(n_files):
    with open(f"{out}/shard-{i:06d}.tar", "wb") as f:
        left = per_file
        while left > 0:
            chunk = block[: min(left, len(block))]
            f.write(i.to_bytes(8, "little") + chunk[8:])
            left -= len(chunk)
"""

WRITE_SMALL = """
import os, sys
out, n, mb = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
os.makedirs(out, exist_ok=True)
size = int(mb * (1 << 20)) // n
block = os.urandom(size)
for i in range(n):
    with open(f"{out}/{i:08d}.png", "wb") as f:
        f.write(i.to_bytes(8, "little") + block[8:])
"""


def measure(root: Path, script: str, args: list[str]) -> dict:
    """Build a one-stage project writing `data/`, then time first repro, status and no-op repro."""
    root.mkdir(parents=True)
    (root / "write.py").write_text(script)
    (root / "dvc.yaml").write_text(
        "stages:\n  write:\n    cmd: python write.py data " + " ".join(args) + "\n"
        "    deps: [write.py]\n    outs: [data]\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _run(["dvc", "init", "-q"], root)
    _run(["dvc", "config", "core.analytics", "false"], root)
    first = _run(["dvc", "repro"], root)
    status = min(_run(["dvc", "status"], root) for _ in range(3))
    noop = min(_run(["dvc", "repro"], root) for _ in range(3))
    files = sum(1 for _ in (root / "data").iterdir())
    size = sum(p.stat().st_size for p in (root / "data").iterdir())
    return {"files": files, "gb": size / (1 << 30), "first": first, "status": status, "noop": noop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=10.0, help="size of the few-large-files artifact")
    ap.add_argument("--small-files", type=int, default=100_000)
    ap.add_argument("--small-mb", type=float, default=400.0)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-dvc-", dir=args.workdir))
    try:
        rows = [("few large files", measure(base / "large", WRITE_LARGE, [str(args.gb)])),
                ("many small files", measure(base / "small", WRITE_SMALL, [str(args.small_files),
                                                                         str(args.small_mb)]))]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ref = rows[0][1]["status"]
    print(f"DVC {_dvc_version()}; {os.cpu_count()} CPUs; each status/no-op figure is the best of 3 runs\n")
    print("| layout | files | GiB | first repro (s) | dvc status (s) | no-op repro (s) | status vs large |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['files']:,} | {r['gb']:.2f} | {r['first']:.1f} | {r['status']:.2f} | "
              f"{r['noop']:.2f} | {r['status'] / ref:.1f}x |")
    verdict = "met" if ref < TARGET_STATUS_S else "MISSED"
    print(f"\ntarget: `dvc status` under {TARGET_STATUS_S:.0f} s after the first hash with {args.gb:g} GiB in few "
          f"large files: {verdict} ({ref:.2f} s)")


if __name__ == "__main__":
    main()
