"""Stage contracts: dvc.yaml gives every stage its paths, and they agree with the registry and with the graph."""

from __future__ import annotations

import re
import shlex

import pytest
from dvc.repo import Repo

from llava_ov.stage import ARTIFACTS, KINDS, parse_args, stage_run
from tests.project import REPO


@pytest.fixture(scope="module")
def stages() -> dict:
    """Every stage of dvc.yaml as DVC resolves it (foreach expanded): name -> (argv, deps, outs, metrics)."""
    with Repo(str(REPO)) as repo:
        out = {}
        for stage in repo.index.stages:
            if not stage.cmd:
                continue
            outs = {o.def_path for o in stage.outs if not o.metric and not o.plot}
            metrics = {o.def_path for o in stage.outs if o.metric}
            out[stage.addressing] = (shlex.split(stage.cmd), {d.def_path for d in stage.deps}, outs, metrics)
        return out


def test_every_artifact_has_a_kind_and_a_stage_that_writes_it(stages):
    assert {c.kind for c in ARTIFACTS.values()} <= set(KINDS)
    assert {c.stage for c in ARTIFACTS.values()} == set(stages)


@pytest.mark.parametrize("name", sorted(ARTIFACTS))
def test_dvc_yaml_passes_the_stage_its_paths(stages, name):
    produced = ARTIFACTS[name]
    argv, deps, outs, metrics = stages[produced.stage]
    module = argv.index("-m") + 1
    args = parse_args(argv[module + 1:], [argv[module + 1]] if not argv[module + 1].startswith("-") else ())
    assert not args.rest, f"{produced.stage}: arguments the stage does not take: {args.rest}"
    assert str(args.out) == produced.path and produced.path in outs
    assert str(args.metrics) == produced.metrics and produced.metrics in metrics
    given = dict(item.split("=", 1) for item in args.inputs)
    for role, path in given.items():
        assert path in deps, f"{produced.stage} reads {path} but dvc.yaml does not list it as a dep"
        if role in ARTIFACTS:
            assert path == ARTIFACTS[role].path, f"{produced.stage}: --in {role}={path}"
    artifact_deps = {d for d in deps if d.startswith("artifacts/")}
    assert artifact_deps == set(given.values()), f"{produced.stage}: deps {artifact_deps} vs inputs {given}"


def test_stage_scripts_name_no_artifact_paths():
    """Paths come from dvc.yaml (or the registry), never from string literals in a stage script."""
    for script in sorted((REPO / "stages").glob("*.py")):
        assert not re.search(r"[\"']artifacts/", script.read_text()), f"{script.name} names an artifact path"


def test_stage_run_writes_seconds_and_metrics(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    with stage_run("pack_{variant}", variants=("stage1", "stage2"),
                   argv=["stage2", "--in", "lengths=elsewhere/lengths", "--metrics", "m.json"]) as run:
        assert run.variant == "stage2" and run.out.as_posix() == "artifacts/pack_stage2"
        assert run.path("lengths").as_posix() == "elsewhere/lengths" and run.path("tokenizer").as_posix() == \
            "artifacts/tokenizer"
        run.metrics["packs"] = 3
    import json

    written = json.loads((tmp_path / "m.json").read_text())
    assert written["packs"] == 3 and written["seconds"] >= 0
    with pytest.raises(SystemExit, match="unknown arguments"):
        with stage_run("ingest", argv=["--bogus"]):
            pass
