"""Diagnose a DVC remote in one sentence, before or after `dvc push`/`dvc pull` fails.

DVC reports a misconfigured S3 remote as, for example, ``ERROR: unexpected error - Forbidden: An error occurred
(403) when calling the HeadObject operation``: it names neither the remote nor what to change, and a missing bucket
on `dvc pull` with a warm cache even reads "Everything is up to date". ``check_remote`` asks DVC itself for the
remote's settings (so it uses exactly the URL, endpoint, region, profile and keys that `dvc push` would, including
``.dvc/config.local`` and the AWS environment variables), then makes the requests a push makes first: list the
remote's prefix, write one empty object and delete it. The first failure becomes a :class:`RemoteProblem` whose
message names the remote, what is wrong and the command that fixes it.

Only S3 (AWS or an S3-compatible endpoint) and local-folder remotes are probed; those are what this project ships
and tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

PROBE_NAME = ".llava-ov-remote-check"
CONNECT_TIMEOUT_S = 5  # an unreachable endpoint answers in seconds, not after botocore's 60 s x retries
# where botocore found the keys (Credentials.method), in the words of the fix
CREDENTIAL_SOURCES = {"env": "the environment", "explicit": ".dvc/config.local or .dvc/config",
                      "shared-credentials-file": "~/.aws/credentials", "config-file": "~/.aws/config"}


class RemoteProblem(RuntimeError):
    """A remote that DVC cannot use as configured; the message says which remote and how to fix it."""


def check_remote(root: Path, name: str | None = None, write: bool = True) -> list[str]:
    """Probe remote ``name`` (default: the project's default remote); returns what works, raises what does not."""
    from dvc.fs import RemoteMissingDepsError
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        remotes = repo.config["remote"]
        name = name or repo.config["core"].get("remote")
        if not name:
            raise RemoteProblem("no remote named and no default remote. Fix: `dvc remote add -d NAME URL`, or "
                                "name one of: " + (", ".join(remotes) or "(none)"))
        if name not in remotes:
            raise RemoteProblem(f"remote {name!r} is not configured (configured: {', '.join(remotes) or 'none'}). "
                                f"Fix: `dvc remote add {name} URL`, or name a configured one")
        url = remotes[name]["url"]
        scheme = url.split("://", 1)[0] if "://" in url else "local"
        if scheme not in ("s3", "local"):
            raise RemoteProblem(f"remote {name!r} ({url}): llava-ov probes s3 and local remotes only. "
                                f"Fix: try it with `dvc status -c -r {name}`, which any remote answers")
        try:
            remote = repo.cloud.get_remote(name)
        except (RemoteMissingDepsError, ImportError) as e:
            raise RemoteProblem(f"remote {name!r} ({url}) needs DVC's {scheme} plugin, which is not installed. "
                                f"Fix: `pip install -c requirements/constraints.txt -e '.[{scheme}]'`") from e
        if scheme == "local":
            return _check_local(name, Path(remote.path), write)
        return _check_s3(name, url, remote.path, remote.fs.fs_args, write)


def _check_local(name: str, path: Path, write: bool) -> list[str]:
    if path.is_dir():
        if write and not os.access(path, os.W_OK):
            raise RemoteProblem(f"remote {name!r}: folder {path} is not writable, so pull works but push will not. "
                                f"Fix: its permissions, or `dvc remote modify --local {name} url OTHER_FOLDER`")
        return [f"remote {name!r}: local folder {path}", "  read: ok",
                "  write: ok" if write else "  write: not checked"]
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise RemoteProblem(f"remote {name!r}: folder {path} does not exist and cannot be created. "
                            f"Fix: `dvc remote modify --local {name} url FOLDER`")
    return [f"remote {name!r}: local folder {path}", "  does not exist yet: the first `dvc push` creates it"]


def _check_s3(name: str, url: str, path: str, fs_args: dict[str, Any], write: bool) -> list[str]:
    """List, then write and delete one object, with the session DVC's s3 plugin would build."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError,
                                     NoCredentialsError, ProfileNotFound, SSLError)

    bucket, _, prefix = path.partition("/")
    client_kwargs = fs_args.get("client_kwargs", {})
    endpoint = client_kwargs.get("endpoint_url")
    where = f"{url} at {endpoint}" if endpoint else f"{url} on AWS S3"
    fix_endpoint = f"`dvc remote modify {name} endpointurl URL`"
    fix_keys = (f"export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or `dvc remote modify --local {name} "
                f"access_key_id ID` + `secret_access_key KEY`, or `dvc remote modify --local {name} profile NAME`")

    def problem(what: str, fix: str) -> RemoteProblem:
        return RemoteProblem(f"remote {name!r} ({where}): {what}. Fix: {fix}")

    try:
        session = boto3.Session(aws_access_key_id=fs_args.get("key"), aws_secret_access_key=fs_args.get("secret"),
                                aws_session_token=fs_args.get("token"), profile_name=fs_args.get("profile"))
    except ProfileNotFound as e:
        raise problem(f"AWS profile {fs_args.get('profile')!r} is not defined", "add it to ~/.aws/config and "
                      f"~/.aws/credentials, or `dvc remote modify --local {name} profile NAME`") from e
    anonymous = bool(fs_args.get("anon"))
    credentials = None if anonymous else session.get_credentials()
    if credentials is None and not anonymous:
        raise problem("no AWS credentials found", fix_keys)
    source = "anonymous" if anonymous else CREDENTIAL_SOURCES.get(credentials.method, credentials.method)
    config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"},
                    s3=fs_args.get("config_kwargs", {}).get("s3") or None,
                    signature_version=UNSIGNED if anonymous else None)
    client = session.client("s3", endpoint_url=endpoint, region_name=client_kwargs.get("region_name"),
                            verify=client_kwargs.get("verify"), config=config)

    def call(op: str, **kwargs: Any) -> dict:
        try:
            return getattr(client, op)(Bucket=bucket, **kwargs)
        except (EndpointConnectionError, ConnectTimeoutError) as e:
            raise problem(f"cannot connect to {endpoint or 'S3'} ({type(e).__name__})",
                          f"start the server or check the address: {fix_endpoint}") from e
        except SSLError as e:
            raise problem(f"TLS failed ({e})", f"`dvc remote modify {name} ssl_verify /path/to/ca-bundle.pem`, or "
                          f"an http:// endpoint: {fix_endpoint}") from e
        except NoCredentialsError as e:
            raise problem("no AWS credentials found", fix_keys) from e
        except ClientError as e:
            raise _client_problem(e, op, problem, bucket, source, name, fix_keys, fix_endpoint) from e
        except BotoCoreError as e:
            raise problem(f"{type(e).__name__}: {e}", fix_endpoint) from e

    listed = call("list_objects_v2", Prefix=prefix.rstrip("/") + "/" if prefix else "", MaxKeys=1)
    lines = [f"remote {name!r}: {where} (credentials: {source})",
             f"  read: ok ({'has objects' if listed.get('KeyCount') else 'empty so far'})"]
    if not write:
        return lines + ["  write: not checked"]
    key = f"{prefix.rstrip('/')}/{PROBE_NAME}" if prefix else PROBE_NAME
    call("put_object", Key=key, Body=b"")
    try:
        call("delete_object", Key=key)
    except RemoteProblem:
        return lines + [f"  write: ok (could not delete the probe s3://{bucket}/{key}: harmless)"]
    return lines + ["  write: ok"]


def _client_problem(e: Any, op: str, problem: Callable[[str, str], RemoteProblem], bucket: str, source: str,
                    name: str, fix_keys: str, fix_endpoint: str) -> RemoteProblem:
    """One S3 error response as a RemoteProblem; codes from the S3 API error list (AWS and S3-compatible stores)."""
    error = e.response.get("Error", {})
    code, status = error.get("Code", ""), e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("NoSuchBucket", "404") or status == 404:
        return problem(f"bucket {bucket!r} does not exist", f"create it (`aws s3 mb s3://{bucket}`, with "
                       f"--endpoint-url for an S3-compatible store) or point the remote at an existing one: "
                       f"`dvc remote modify {name} url s3://BUCKET/PATH`")
    if code == "InvalidAccessKeyId":
        return problem(f"the access key id (from {source}) is not known to this endpoint", fix_keys)
    if code == "SignatureDoesNotMatch":
        return problem(f"the secret access key (from {source}) does not match the access key id", fix_keys)
    if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
        return problem(f"the session token (from {source}) has expired or is invalid", "refresh it "
                       f"(`aws sso login`, or new AWS_SESSION_TOKEN), or `dvc remote modify --local {name} "
                       "session_token TOKEN`")
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
        return problem(f"bucket {bucket!r} is in another region ({error.get('Region') or error.get('Message')})",
                       f"`dvc remote modify {name} region REGION`")
    if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
        action = {"list_objects_v2": "s3:ListBucket (pull and status need it)",
                  "put_object": "s3:PutObject (read works, so pull will work but push will not)"}.get(op, op)
        return problem(f"the credentials (from {source}) are refused {action}", f"grant that permission on "
                       f"bucket {bucket!r}, or use other credentials: {fix_keys}")
    return problem(f"{op} failed with {code or status}: {error.get('Message', e)}", fix_endpoint)
