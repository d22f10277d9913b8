"""Sharing artifacts through an S3 API (moto's server on 127.0.0.1, credentials enforced).

The smoke build goes up with `dvc push` (interrupted once, then rerun), and comes down into a fresh clone by
stage (`dvc pull stage0`, `dvc pull pack@stage2`), then whole (interrupted once, then rerun); the clone is then
clean and `dvc repro` a no-op. A rerun must not send again what the interrupted run finished: the server's
request log is the witness. Bad remotes (wrong keys, missing bucket, unreachable endpoint, no credentials, no write
permission) get one clear line from `llava-ov remote check`.

Skipped, with the reason, only if the moto server cannot start; every other problem is a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

import pytest
import yaml

from tests.project import env, git, run, stages_that_would_run
from tests.s3_server import REGION, S3Server, free_port, start_s3_server

BUCKET = "llava-ov"
INTERRUPT_AFTER = 5  # finished transfers before the kill


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    """moto is in the dev extra that `./dev test` installs: a server that cannot start is an error, not a skip."""
    server = start_s3_server(tmp_path_factory.mktemp("moto"), (BUCKET,))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def aws_env(s3, tmp_path_factory) -> Iterator[pytest.MonkeyPatch]:
    """The writer's keys exported as users do; the machine's own AWS files, profiles and endpoints kept out."""
    aws = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION",
                    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_CONFIG_FILE", str(aws / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe when keys are missing
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_ACCESS_KEY_ID", s3.key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
        yield mp


def add_s3_remote(cwd: Path, name: str, url: str, endpoint: str, *, local: bool, default: bool = False) -> None:
    """`dvc remote add` + `endpointurl`, as README "Sharing artifacts" says; --local keeps it out of git."""
    scope = ["--local"] if local else []
    run(["dvc", "remote", "add", "-f", *scope, *(["-d"] if default else []), name, url], cwd)
    run(["dvc", "remote", "modify", *scope, name, "endpointurl", endpoint], cwd)


def object_keys(s3: S3Server, since: int, method: str, prefix: str) -> set[str]:
    """Keys of the objects under ``prefix`` that requests of ``method`` completed since log offset ``since``."""
    keys = (unquote(path.split("?")[0].removeprefix(f"/{BUCKET}/"))
            for m, path, status in s3.requests(since) if m == method and status == 200)
    return {k for k in keys if k.startswith(prefix)}


def interrupt(cmd: list[str], cwd: Path, s3: S3Server, method: str, prefix: str) -> bool:
    """Run ``cmd`` and SIGKILL it after INTERRUPT_AFTER objects went through; False if it finished first."""
    since = s3.log_offset()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if len(object_keys(s3, since, method, prefix)) >= INTERRUPT_AFTER:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return False


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    run(cmd, cwd)
    seconds = time.perf_counter() - t0
    print(f"{' '.join(cmd)}: {seconds:.1f} s")
    return seconds


@pytest.fixture(scope="module")
def pushed(smoke_project, s3, aws_env) -> dict:
    """The smoke build pushed to s3://llava-ov/smoke: a `dvc push -j 1` killed midway, then a full rerun."""
    prefix = "smoke/"
    add_s3_remote(smoke_project, "s3test", f"s3://{BUCKET}/smoke", s3.endpoint, local=True)
    killed = interrupt(["dvc", "push", "-r", "s3test", "-j", "1"], smoke_project, s3, "PUT", prefix + "files/")
    before = s3.keys(BUCKET, prefix)
    since = s3.log_offset()
    seconds = timed(["dvc", "push", "-r", "s3test"], smoke_project)
    return {"killed": killed, "before": before, "sent": object_keys(s3, since, "PUT", prefix),
            "after": s3.keys(BUCKET, prefix), "seconds": seconds, "prefix": prefix}



@pytest.mark.e2e
def test_interrupted_push_resumes_without_resending(pushed, smoke_project):
    assert pushed["killed"], f"`dvc push -j 1` finished before {INTERRUPT_AFTER} uploads: nothing was interrupted"
    before, sent, after = pushed["before"], pushed["sent"], pushed["after"]
    assert 0 < len(before) < len(after), (len(before), len(after))
    assert not before & sent, f"the rerun sent again what the killed push had finished: {sorted(before & sent)}"
    assert after == before | sent
    print(f"push killed with {len(before)} of {len(after)} objects up; the rerun sent the other {len(sent)}")
    status = run(["dvc", "status", "-c", "-r", "s3test", "--json"], smoke_project).stdout
    assert json.loads(status) == {}, status


def dvc_cached_outputs(clone: Path) -> set[str]:
    """Every output that DVC caches, i.e. every output in dvc.lock but the `cache: false` ones git tracks."""
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    tracked = git(clone, "ls-files").splitlines()
    outs = {o["path"] for stage in lock.values() for o in stage.get("outs", [])}
    return {p for p in outs if not any(t == p or t.startswith(p + "/") for t in tracked)}


def pulled(clone: Path) -> set[str]:
    """The DVC-cached outputs present in ``clone``."""
    return {p for p in dvc_cached_outputs(clone) if (clone / p).exists()}


@pytest.mark.e2e
def test_fresh_clone_pulls_by_stage_then_everything(pushed, smoke_project, s3, aws_env, monkeypatch, tmp_path):
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(smoke_project), str(clone))
    # configured as a team would commit it; the keys only in the clone's .dvc/config.local, not in the environment
    add_s3_remote(clone, "team", f"s3://{BUCKET}/smoke", s3.endpoint, local=False, default=True)
    run(["dvc", "remote", "modify", "--local", "team", "access_key_id", s3.key], clone)
    run(["dvc", "remote", "modify", "--local", "team", "secret_access_key", s3.secret], clone)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert s3.key not in (clone / ".dvc" / "config").read_text()
    assert pulled(clone) == set()

    timed(["dvc", "pull", "stage0"], clone)
    assert pulled(clone) == {"artifacts/stage0"}
    timed(["dvc", "pull", "pack@stage2"], clone)
    assert pulled(clone) == {"artifacts/stage0", "artifacts/pack_stage2"}

    prefix = pushed["prefix"] + "files/md5/"
    assert interrupt(["dvc", "pull", "-j", "1"], clone, s3, "GET", prefix), \
        f"`dvc pull -j 1` finished before {INTERRUPT_AFTER} downloads: nothing was interrupted"
    cache = clone / ".dvc" / "cache" / "files" / "md5"
    have = {prefix + p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
    since = s3.log_offset()
    timed(["dvc", "pull"], clone)
    fetched = object_keys(s3, since, "GET", prefix)
    assert fetched, "the rerun fetched nothing, so the interrupted pull had not been interrupted"
    assert not have & fetched, f"the rerun fetched again what was already in the cache: {sorted(have & fetched)}"
    print(f"pull killed with {len(have)} objects cached; the rerun fetched {len(fetched)}")

    assert pulled(clone) == dvc_cached_outputs(clone)
    assert json.loads(run(["dvc", "status", "--json"], clone).stdout) == {}
    assert stages_that_would_run(clone) == []
    assert "Running stage" not in run(["dvc", "repro"], clone).stdout


@pytest.fixture(scope="module")
def scratch(s3, aws_env, tmp_path_factory) -> Path:
    """A DVC project with one tracked file and a working default S3 remote 'team' (tests add others)."""
    root = tmp_path_factory.mktemp("scratch")
    git(root, "init", "-q")
    run(["dvc", "init", "-q"], root)
    (root / "data.bin").write_bytes(os.urandom(1 << 16))
    run(["dvc", "add", "-q", "data.bin"], root)
    add_s3_remote(root, "team", f"s3://{BUCKET}/scratch", s3.endpoint, local=False, default=True)
    return root


def check(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["llava-ov", "remote", "check", *args], root, check=False)


def assert_one_clear_error(proc: subprocess.CompletedProcess, remote: str, *phrases: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 1, (proc.returncode, proc.stdout, err)
    assert len(err.splitlines()) == 1, err
    for phrase in (f"remote {remote!r}", "Fix:", *phrases):
        assert phrase in err, err


def test_remote_check_passes_and_push_works(scratch):
    proc = check(scratch)
    assert proc.returncode == 0, proc.stderr
    assert "remote 'team'" in proc.stdout and "read: ok" in proc.stdout and "write: ok" in proc.stdout
    assert "(credentials: the environment)" in proc.stdout
    run(["dvc", "push"], scratch)


def test_wrong_access_key(scratch, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    assert run(["dvc", "push"], scratch, check=False).returncode != 0  # DVC fails too, but names neither
    assert_one_clear_error(check(scratch), "team", "access key id", "not known", "AWS_ACCESS_KEY_ID")


def test_wrong_secret_key(scratch, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert_one_clear_error(check(scratch), "team", "secret access key", "does not match")


def test_no_credentials(scratch, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert_one_clear_error(check(scratch), "team", "no AWS credentials", "dvc remote modify --local team")


def test_missing_bucket(scratch, s3):
    add_s3_remote(scratch, "nobucket", "s3://no-such-bucket/llava-ov", s3.endpoint, local=False)
    assert_one_clear_error(check(scratch, "nobucket"), "nobucket", "bucket 'no-such-bucket' does not exist",
                           "dvc remote modify nobucket url")


def test_unreachable_endpoint(scratch):
    add_s3_remote(scratch, "down", f"s3://{BUCKET}/x", f"http://127.0.0.1:{free_port()}", local=False)
    t0 = time.perf_counter()
    proc = check(scratch, "down")
    assert time.perf_counter() - t0 < 60
    assert_one_clear_error(proc, "down", "cannot connect", "dvc remote modify down endpointurl")


def test_read_only_credentials(scratch, s3, monkeypatch):
    # moto names listing by the API call (s3:ListObjectsV2) where AWS says s3:ListBucket: grant both
    key, secret = s3.add_user("reader", ["s3:ListBucket", "s3:ListObjectsV2", "s3:GetObject"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert check(scratch, "--read-only").returncode == 0
    assert_one_clear_error(check(scratch), "team", "s3:PutObject", "push will not")


def test_remote_check_local_folder(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q")
    run(["dvc", "init", "-q"], root)
    run(["dvc", "remote", "add", "-d", "shared", "../remote"], root)
    assert "does not exist yet" in check(root).stdout
    (tmp_path / "remote").mkdir()
    assert "write: ok" in check(root).stdout
    (tmp_path / "a-file").write_text("in the way")
    run(["dvc", "remote", "add", "elsewhere", str(tmp_path / "a-file" / "remote")], root)
    assert_one_clear_error(check(root, "elsewhere"), "elsewhere", "cannot be created")
