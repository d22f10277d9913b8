"""A local S3 API for the remote tests and benchmarks/bench_remote.py: moto's standalone server on 127.0.0.1.

moto accepts any credentials until told otherwise. ``start_s3_server`` creates IAM users with access keys (a writer
with ``s3:*``; more with ``add_user``), then has moto check every request's signature against them
(``POST /moto-api/reset-auth``), so wrong keys are refused as on AWS. Every request the server answers is in its
log (``requests``), which is how the tests count what a push or pull sent.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGION = "us-east-1"
_REQUEST = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')


class ServerUnavailable(RuntimeError):
    """The moto server could not be started here (not installed, or it did not answer)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    key: str
    secret: str
    log: Path
    proc: subprocess.Popen

    def client(self, key: str | None = None, secret: str | None = None):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=key or self.key, aws_secret_access_key=secret or self.secret)

    def keys(self, bucket: str, prefix: str = "") -> set[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    def log_offset(self) -> int:
        return self.log.stat().st_size

    def requests(self, since: int = 0) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request answered since log offset ``since``."""
        with open(self.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        return [(m, p, int(s)) for m, p, s in _REQUEST.findall(text)]

    def add_user(self, name: str, actions: list[str]) -> tuple[str, str]:
        """An IAM user allowed ``actions`` on every resource; returns its (access key id, secret)."""
        self._enforce_auth(False)
        try:
            return _create_user(self.endpoint, name, actions)
        finally:
            self._enforce_auth(True)

    def _enforce_auth(self, on: bool) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf",
                                     method="POST", headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).read()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _create_user(endpoint: str, name: str, actions: list[str]) -> tuple[str, str]:
    import boto3
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup",
                       aws_secret_access_key="setup")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def start_s3_server(workdir: Path, buckets: tuple[str, ...] = (), timeout_s: float = 60) -> S3Server:
    """Start ``moto_server`` on a free port, create a writer user and ``buckets``, then enforce credentials."""
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        raise ServerUnavailable(f"{exe} not found: install the dev extra (moto[s3], flask, flask-cors)")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "moto.log"
    endpoint = f"http://127.0.0.1:{free_port()}"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", endpoint.rsplit(":", 1)[1]], stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise ServerUnavailable(f"moto_server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                proc.kill()
                raise ServerUnavailable(f"moto_server did not answer on {endpoint} within {timeout_s:.0f} s: "
                                        f"{log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    try:
        key, secret = _create_user(endpoint, "writer", ["s3:*"])
        server = S3Server(endpoint, key, secret, log, proc)
        for bucket in buckets:
            server.client().create_bucket(Bucket=bucket)
        server._enforce_auth(True)
    except Exception:
        proc.kill()
        raise
    return server
