"""Shared fixtures. The smoke-profile build is made once per test session and reused by the e2e tests."""

from __future__ import annotations

import pytest

from tests.project import copy_project, git, run


@pytest.fixture(scope="session")
def smoke_project(tmp_path_factory):
    """A scratch copy of the project switched to the smoke profile and fully built with `dvc repro`."""
    root = copy_project(tmp_path_factory.mktemp("smoke") / "project")
    run(["llava-ov", "profile", "smoke"], root)
    run(["dvc", "repro"], root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "smoke build")
    return root
