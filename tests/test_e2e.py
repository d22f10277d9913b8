"""End to end on the smoke profile: the whole graph builds, rebuilds nothing when nothing changed, and its
artifacts travel through a DVC remote to a fresh clone."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.project import git, run, stages_that_would_run

pytestmark = pytest.mark.e2e


def test_every_stage_built_with_its_outputs(smoke_project):
    lock = yaml.safe_load((smoke_project / "dvc.lock").read_text())["stages"]
    graph = yaml.safe_load((smoke_project / "dvc.yaml").read_text())["stages"]
    assert lock, "dvc repro built nothing"
    for name, stage in lock.items():
        for out in stage.get("outs", []):
            assert (smoke_project / out["path"]).exists(), f"stage {name}: {out['path']} missing"
    expected = set()
    for name, stage in graph.items():
        if "foreach" in stage:
            expected |= {f"{name}@{item}" for item in stage["foreach"]}
        else:
            expected.add(name)
    assert set(lock) == expected


def test_ingest_metrics_reconcile(smoke_project):
    m = json.loads((smoke_project / "metrics" / "ingest.json").read_text())
    assert m["total"] > 0
    assert m["total"] == sum(s["samples"] for s in m["sources"].values())
    assert m["rejected"] == sum(s["rejected"] for s in m["sources"].values())


def test_second_repro_is_a_noop(smoke_project):
    assert stages_that_would_run(smoke_project) == []
    out = run(["dvc", "repro"], smoke_project).stdout
    assert "Running stage" not in out


def test_push_pull_fresh_clone(smoke_project, tmp_path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-f", "--local", "scratch", str(remote)], smoke_project)
    run(["dvc", "push", "-r", "scratch"], smoke_project)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(smoke_project), str(clone))
    run(["dvc", "remote", "add", "-f", "--local", "scratch", str(remote)], clone)
    run(["dvc", "pull", "-r", "scratch"], clone)
    status = run(["dvc", "status", "--json"], clone).stdout
    assert json.loads(status) == {}
    assert stages_that_would_run(clone) == []
