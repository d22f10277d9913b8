"""The artifact contract: atomic writes, stable digests, readers that refuse what does not fit."""

import os
import shutil
import subprocess
import sys

import pytest

from llava_ov.artifacts import ArtifactError, ArtifactWriter, digest_dir, open_artifact
from tests.project import env


def _build(target, files, **kw):
    with ArtifactWriter(target, "demo", schema=1, params={"k": 1}, **kw) as w:
        for rel, data in files.items():
            p = w.dir / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        w.stats["n"] = len(files)
    return w.artifact


def test_write_then_open_roundtrip(tmp_path):
    art = _build(tmp_path / "a", {"x.bin": b"1", "sub/y.bin": b"22"})
    opened = open_artifact(tmp_path / "a", "demo", 1, verify=True)
    assert opened.digest == art.digest
    assert opened.meta["files"] == {"sub/y.bin": 2, "x.bin": 1}
    assert opened.meta["params"] == {"k": 1} and opened.stats == {"n": 2}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_digest_ignores_write_order_and_timestamps(tmp_path):
    a = _build(tmp_path / "a", {"x": b"1", "y": b"2"})
    b = _build(tmp_path / "b", {"y": b"2", "x": b"1"})
    os.utime(tmp_path / "b" / "x", (1, 1))
    assert a.digest == b.digest == digest_dir(tmp_path / "b")


def test_digest_sees_path_and_content(tmp_path):
    a = _build(tmp_path / "a", {"x": b"12"})
    assert a.digest != _build(tmp_path / "b", {"y": b"12"}).digest
    assert a.digest != _build(tmp_path / "c", {"x": b"13"}).digest
    # moving bytes across a file boundary must change the digest
    assert _build(tmp_path / "d", {"x": b"1", "y": b"2"}).digest != _build(tmp_path / "e", {"x": b"12", "y": b""}).digest


def test_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ArtifactWriter(tmp_path / "a", "demo", schema=1) as w:
            (w.dir / "half").write_bytes(b"x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_rebuild_replaces_previous(tmp_path):
    _build(tmp_path / "a", {"x": b"old", "stale": b"1"})
    art = _build(tmp_path / "a", {"x": b"new"})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["artifact.json", "x"]
    assert open_artifact(tmp_path / "a", "demo", 1).digest == art.digest


def test_reader_refuses_missing_partial_and_mismatched(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        open_artifact(tmp_path / "nope", "demo", 1)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "x").write_bytes(b"1")
    with pytest.raises(ArtifactError, match="no artifact.json"):
        open_artifact(tmp_path / "half", "demo", 1)
    _build(tmp_path / "a", {"x": b"1", "y": b"2"})
    with pytest.raises(ArtifactError, match="kind 'demo', expected 'other'"):
        open_artifact(tmp_path / "a", "other", 1)
    with pytest.raises(ArtifactError, match="schema 1"):
        open_artifact(tmp_path / "a", "demo", 2)
    (tmp_path / "a" / "y").unlink()
    with pytest.raises(ArtifactError, match="missing=\\['y'\\]"):
        open_artifact(tmp_path / "a", "demo", 1)


def test_verify_detects_same_size_edit(tmp_path):
    _build(tmp_path / "a", {"x": b"1"})
    (tmp_path / "a" / "x").write_bytes(b"2")
    open_artifact(tmp_path / "a", "demo", 1)  # sizes agree: the cheap check passes
    with pytest.raises(ArtifactError, match="digest does not match"):
        open_artifact(tmp_path / "a", "demo", 1, verify=True)


def test_input_digests_recorded(tmp_path):
    up = _build(tmp_path / "up", {"x": b"1"})
    down = _build(tmp_path / "down", {"y": b"2"}, inputs={"up": up})
    assert down.meta["inputs"] == {"up": up.digest}
    shutil.rmtree(tmp_path / "up")


_WRITER = """
import sys, time
from llava_ov.artifacts import ArtifactWriter
with ArtifactWriter(sys.argv[1], "demo", schema=1) as w:
    (w.dir / "half.bin").write_bytes(b"x" * 100_000)
    print("writing", flush=True)
    time.sleep(600)
"""


def _start_writer(target) -> subprocess.Popen:
    """A process in the middle of writing artifact ``target`` (its temporary folder exists and has data)."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                            env=env())
    assert proc.stdout.readline().strip() == "writing"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL: no exception handler, no atexit, nothing of the writer's own clean-up runs
    proc.wait()
    proc.stdout.close()


def _temporaries(folder, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".tmp-{name}-") and p.is_dir())


def test_next_run_removes_the_temporaries_of_a_killed_writer_and_only_those(tmp_path):
    _kill(_start_writer(tmp_path / "a"))
    dead = _temporaries(tmp_path, "a")
    _kill(_start_writer(tmp_path / "b"))  # another artifact's killed writer: not `a`'s to remove
    live = _start_writer(tmp_path / "a")  # a writer of the same artifact that is still running
    try:
        running = sorted(set(_temporaries(tmp_path, "a")) - set(dead))
        assert len(dead) == len(running) == 1 and len(_temporaries(tmp_path, "b")) == 1
        art = _build(tmp_path / "a", {"x": b"1"})
        assert open_artifact(tmp_path / "a", "demo", 1, verify=True).digest == art.digest
        assert _temporaries(tmp_path, "a") == running, "the killed writer's temporary folder is still there"
        assert len(_temporaries(tmp_path, "b")) == 1
    finally:
        _kill(live)


def test_verify_reports_leftovers_and_damaged_artifacts(tmp_path):
    """`llava-ov verify FOLDER` checks every artifact in it (`--digests`: content too) and lists what killed
    writers left behind; `--clean` removes those leftovers, never a running writer's folder."""
    from click.testing import CliRunner

    from llava_ov.cli import main

    _build(tmp_path / "a", {"x": b"1"})
    _build(tmp_path / "b", {"y": b"2"})
    cli = CliRunner()
    clean = cli.invoke(main, ["verify", str(tmp_path)])
    assert clean.exit_code == 0, clean.output
    _kill(_start_writer(tmp_path / "a"))
    dead, = _temporaries(tmp_path, "a")
    (tmp_path / ".old-b-4194305").mkdir()  # a replaced artifact whose removal was cut short
    (tmp_path / "b" / "y").write_bytes(b"3")  # same size: only the digest sees it
    live = _start_writer(tmp_path / "c")
    try:
        running, = _temporaries(tmp_path, "c")
        cheap = cli.invoke(main, ["verify", str(tmp_path)])
        assert cheap.exit_code == 1
        assert dead in cheap.output and ".old-b-4194305" in cheap.output and running not in cheap.output
        assert "digest" not in cheap.output
        full = cli.invoke(main, ["verify", "--digests", str(tmp_path)])
        assert full.exit_code == 1 and "b" in full.output and "digest" in full.output
        cli.invoke(main, ["verify", "--clean", str(tmp_path)])
        assert _temporaries(tmp_path, "a") == [] and not (tmp_path / ".old-b-4194305").exists()
        assert _temporaries(tmp_path, "c") == [running]
    finally:
        _kill(live)
