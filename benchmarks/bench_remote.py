"""`dvc push`/`dvc pull` through an S3 API against a local folder remote, and what file count costs.

Builds a scratch DVC project per layout and moves it through two remotes in the same run: a local folder, and
moto's S3 server on 127.0.0.1 (the one tests/test_remote_s3.py uses, signatures checked). Each pull starts from an
empty cache and workspace, so it fetches everything and checks it out. Layouts:

- `shards`: `--gb` of data in files of `--file-mb` (packed-shard-like; s3fs sends anything over 100 MiB as a
  multipart upload of 50 MiB parts, so 250 MB files take the same path as the 2 GB shards of the 4b/8b profiles);
- `small files`: `--small-files` files of `--small-kb`, the layout the project's file-count rule forbids.

Prints a Markdown table: seconds, MB/s and files/s per direction, S3 requests, the dvc process's peak RSS
(os.wait4), and the S3/local time ratio. Both servers share this machine's cores with DVC, so the S3 figures are a
floor on per-file and per-request cost, not a bandwidth forecast for a real store.

Usage: python benchmarks/bench_remote.py [--gb 1] [--file-mb 250] [--small-files 5000] [--small-kb 64] [--jobs N]
       [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/s3_server.py: the tests' own moto server
from tests.s3_server import REGION, S3Server, start_s3_server  # noqa: E402

BIN = Path(sys.executable).parent
BUCKET = "bench"
MB = 1e6


@dataclass
class Transfer:
    seconds: float
    rss_mb: float
    requests: int | None


@dataclass
class Row:
    remote: str
    layout: str
    files: int
    bytes: int
    push: Transfer
    pull: Transfer


def _env(server: S3Server, home: Path) -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "AWS_ACCESS_KEY_ID": server.key, "AWS_SECRET_ACCESS_KEY": server.secret, "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(home / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true"}


def _dvc(args: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """Run `dvc ARGS`; returns (seconds, peak RSS in MB of the dvc process and its waited children)."""
    with open(cwd / "dvc.out", "ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["dvc", *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:  # the scratch folder is deleted on the way out: show the output here
        raise RuntimeError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{(cwd / 'dvc.out').read_text(errors='replace')[-3000:]}")
    return seconds, usage.ru_maxrss * 1024 / MB  # Linux: ru_maxrss in KiB


def _write_files(folder: Path, n: int, size: int) -> None:
    """``n`` distinct files of ``size`` bytes (one random block, each file stamped with its index)."""
    folder.mkdir(parents=True)
    block = os.urandom(min(size, 1 << 24))
    for i in range(n):
        with open(folder / f"{i:08d}.tar", "wb") as f:
            left = size
            while left > 0:
                chunk = block[: min(left, len(block))]
                f.write(i.to_bytes(8, "little") + chunk[8:])
                left -= len(chunk)


def measure(base: Path, layout: str, n: int, size: int, server: S3Server, env: dict, jobs: list[str]) -> list[Row]:
    project = base / layout.replace(" ", "-")
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    _dvc(["init", "-q"], project, env)
    _dvc(["config", "core.analytics", "false"], project, env)
    _write_files(project / "data", n, size)
    _dvc(["add", "-q", "data"], project, env)
    _dvc(["remote", "add", "local", str(base / f"remote-{project.name}")], project, env)
    _dvc(["remote", "add", "s3", f"s3://{BUCKET}/{project.name}"], project, env)
    _dvc(["remote", "modify", "s3", "endpointurl", server.endpoint], project, env)
    rows = []
    for remote in ("local", "s3"):
        moves = []
        for op in ("push", "pull"):
            if op == "pull":  # fetch everything: nothing in the cache, nothing checked out
                shutil.rmtree(project / ".dvc" / "cache")
                shutil.rmtree(project / "data")
            since = server.log_offset()
            seconds, rss = _dvc([op, "-q", "-r", remote, *jobs], project, env)
            moves.append(Transfer(seconds, rss, len(server.requests(since)) if remote == "s3" else None))
        files = sorted((project / "data").iterdir())
        assert len(files) == n and all(f.stat().st_size == size for f in files), "pull did not restore the data"
        rows.append(Row(remote, layout, n, n * size, *moves))
    shutil.rmtree(project)
    return rows


def format_table(rows: list[Row]) -> str:
    local = {r.layout: r for r in rows if r.remote == "local"}
    lines = ["| remote | layout | files | MB | push s | push MB/s | push files/s | pull s | pull MB/s | pull files/s "
             "| S3 requests push / pull | peak RSS push / pull (MB) | time vs local push / pull |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = local[r.layout]
        requests = f"{r.push.requests:,} / {r.pull.requests:,}" if r.push.requests is not None else "-"
        lines.append(
            f"| {r.remote} | {r.layout} | {r.files:,} | {r.bytes / MB:,.0f} | {r.push.seconds:.1f} | "
            f"{r.bytes / MB / r.push.seconds:.0f} | {r.files / r.push.seconds:.1f} | {r.pull.seconds:.1f} | "
            f"{r.bytes / MB / r.pull.seconds:.0f} | {r.files / r.pull.seconds:.1f} | {requests} | "
            f"{r.push.rss_mb:.0f} / {r.pull.rss_mb:.0f} | "
            f"{r.push.seconds / base.push.seconds:.2f}x / {r.pull.seconds / base.pull.seconds:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="size of the shards layout (GB)")
    ap.add_argument("--file-mb", type=float, default=250.0, help="size of one shard (MB)")
    ap.add_argument("--small-files", type=int, default=5000, help="files in the small-files layout (0: skip it)")
    ap.add_argument("--small-kb", type=float, default=64.0, help="size of one small file (KB)")
    ap.add_argument("--jobs", type=int, default=None, help="dvc push/pull --jobs [default: DVC's, 4 x CPUs]")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-remote-", dir=args.workdir))
    os.environ["TMPDIR"] = str(base)  # moto spools object bodies there: cleaned up with the rest
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []
    server = start_s3_server(base / "moto", (BUCKET,))
    try:
        env = _env(server, base)
        n_shards = max(1, round(args.gb * 1e3 / args.file_mb))
        rows = measure(base, "shards", n_shards, int(args.file_mb * MB), server, env, jobs)
        if args.small_files:
            rows += measure(base, "small files", args.small_files, int(args.small_kb * 1e3), server, env, jobs)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"dvc {version('dvc')}, dvc-s3 {version('dvc-s3')}, s3fs {version('s3fs')}, moto {version('moto')}; "
          f"{os.cpu_count()} CPUs; jobs {args.jobs or 'DVC default'}; pull = fetch into an empty cache + checkout\n")
    print(format_table(rows))


if __name__ == "__main__":
    main()
