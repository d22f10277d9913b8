"""The eval stage on the smoke profile with a local lmms-eval benchmark: `dvc repro eval@stage2`, then cached."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.lmms_fixture import TASKS, write_benchmark
from tests.project import run
from tests.test_incremental import set_param

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_eval_stage_runs_a_local_benchmark_and_reuses_its_results(smoke_project, tmp_path, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(smoke_project, root, symlinks=True)  # the shared smoke build stays as it is
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    before = json.loads((root / "metrics" / "eval_stage2.json").read_text())
    write_benchmark(root / "bench", data_ref="../data/test.parquet")
    set_param(root, "eval.lmms.tasks", list(TASKS))
    set_param(root, "eval.lmms.include_path", ["bench/tasks"])

    start = time.perf_counter()
    run(["dvc", "repro", "eval@stage2"], root)
    first = time.perf_counter() - start
    metrics = json.loads((root / "metrics" / "eval_stage2.json").read_text())
    assert metrics["lmms_generation"] is True
    assert {t: (m["samples"], m["failed"]) for t, m in metrics["lmms"].items()} == {t: (20, 0) for t in TASKS}
    assert "exact_match" in metrics["lmms"]["shapes_mc"] and "exact_match" not in metrics["lmms"]["shapes_choice"]
    offline = {k: v for k, v in metrics.items() if k not in ("lmms", "lmms_generation", "cache", "seconds")}
    assert offline == {k: v for k, v in before.items() if k not in ("cache", "seconds")}  # unchanged
    saved = json.loads((root / "artifacts" / "eval_stage2" / "lmms" / "shapes_mc.json").read_text())
    assert len(saved["generation"]["samples"]) == 20 and saved["digests"]["data_source"] == "task"

    start = time.perf_counter()
    run(["dvc", "repro", "--force", "--single-item", "eval@stage2"], root)  # this stage only, not its upstream
    second = time.perf_counter() - start
    again = json.loads((root / "metrics" / "eval_stage2.json").read_text())
    assert again["cache"]["misses"] == 0 and again["lmms"] == metrics["lmms"]

    run(["dvc", "repro", "--single-item", "report"], root)  # the other checkpoints' eval stages are not rerun
    report = (root / "artifacts" / "report" / "report.md").read_text()
    assert "## lmms-eval benchmarks per stage" in report and "## Published benchmarks" in report
    print(f"\neval@stage2 with the local lmms-eval benchmark: first run {first:.1f} s, cached rerun {second:.1f} s "
          f"(stage-internal {metrics['seconds']} s and {again['seconds']} s)")
