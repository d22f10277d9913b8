"""Experiment comparison (`llava-ov compare`): columns from `dvc exp show --json`, changed params, metric patterns,
stale metrics of experiments run only part-way; end to end, a queued data-mix sweep on the smoke build."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from llava_ov.cli import main
from llava_ov.experiments import (changed_params, columns, format_comparison, matched_metrics, stale_metric_files,
                                  stale_stages)
from tests.project import run


def _rev(rev: str, mix: dict, selected: int, acc: float) -> dict:
    return {"rev": rev, "timestamp": None,
            "params": {"params.yaml": {"data": {"seed": 0, "balance": {"method": "inverse_frequency", "mix": mix}}}},
            "metrics": {"metrics/balance.json": {"data": {"selected": selected, "coverage_after": 0.04}},
                        "metrics/eval_stage2.json": {"data": {"easyvqa": {"accuracy": acc, "loss": 1.5},
                                                              "category": {"ocr": {"mc_accuracy": 0.5},
                                                                           "caption": {"mc_accuracy": 0.25}}}}}}


EXP_SHOW = [
    {"rev": "workspace", "name": None, "data": _rev("workspace", {"emoji": 1.0, "digits": 1.0}, 100, 0.5),
     "error": None, "experiments": None},
    {"rev": "a" * 40, "name": "main", "data": _rev("a" * 40, {"emoji": 1.0, "digits": 1.0}, 100, 0.5), "error": None,
     "experiments": [
         {"name": "emoji2", "executor": {"state": "success"},
          "revs": [{"rev": "b" * 40, "name": "emoji2", "error": None,
                    "data": _rev("b" * 40, {"emoji": 2.0, "digits": 1.0}, 120, 0.625)}]},
         {"name": "digits3", "executor": {"state": "failed"},
          "revs": [{"rev": "c" * 40, "name": "digits3", "error": {"msg": "boom"},
                    "data": _rev("c" * 40, {"emoji": 1.0, "digits": 3.0}, 90, 0.5)}]}]},
]


def test_columns_follow_exp_show_order_and_state():
    cols = columns(EXP_SHOW)
    assert [(c.name, c.state, c.rev) for c in cols] == [("main", "baseline", "aaaaaaa"), ("emoji2", "success", "bbbbbbb"),
                                                         ("digits3", "failed", "ccccccc")]
    assert cols[1].params["balance.mix.emoji"] == 2.0
    assert cols[1].metrics["eval_stage2:easyvqa.accuracy"] == 0.625
    assert [c.name for c in columns(EXP_SHOW, workspace=True)][0] == "workspace"


def test_only_params_that_differ_unless_asked():
    cols = columns(EXP_SHOW)
    assert changed_params(cols) == ["balance.mix.emoji", "balance.mix.digits"]
    assert changed_params(cols, ("balance.method", "seed")) == ["seed", "balance.method", "balance.mix.emoji",
                                                                "balance.mix.digits"]
    assert changed_params(cols[:1]) == []


def test_metric_patterns_with_wildcards_in_pattern_order():
    cols = columns(EXP_SHOW)
    keys = matched_metrics(cols, ("eval_stage2:category.*.mc_accuracy", "balance:selected", "nothing:*"))
    assert keys == ["eval_stage2:category.ocr.mc_accuracy", "eval_stage2:category.caption.mc_accuracy",
                    "balance:selected"]


def test_comparison_table_layout():
    cols = columns(EXP_SHOW)
    for col in cols:
        col.stale = set()
    cols[1].stale = {"eval_stage2"}
    table = format_comparison(cols, changed_params(cols), ["balance:selected", "eval_stage2:easyvqa.accuracy"])
    lines = table.splitlines()
    assert lines[0] == "|  | main | emoji2 | digits3 |"
    assert lines[1] == "|---|---:|---:|---:|"
    assert lines[2] == "| state | baseline aaaaaaa | success bbbbbbb | failed ccccccc |"
    assert lines[3] == "| balance.mix.emoji | 1 | 2 | 1 |"
    assert lines[5] == "| balance:selected | 100 | 120 | 90 |"
    assert lines[6] == "| eval_stage2:easyvqa.accuracy | 0.5 | 0.625 * | 0.5 |"
    assert lines[-1].startswith("* stale:")


def _lock(balance_out: str, lengths_dep: str, lengths_mix: float = 1.0) -> dict:
    return {"schema": "2.0", "stages": {
        "balance": {"deps": [{"path": "stages/balance.py", "md5": "s1"}],
                    "params": {"params.yaml": {"balance": {"mix": {"emoji": lengths_mix}}}},
                    "outs": [{"path": "artifacts/balance", "md5": balance_out},
                             {"path": "metrics/balance.json", "md5": "m" + balance_out}]},
        "lengths": {"deps": [{"path": "artifacts/balance", "md5": lengths_dep}],
                    "params": {"params.yaml": {"lengths.pools": ["align"]}},
                    "outs": [{"path": "artifacts/lengths", "md5": "l1"}, {"path": "metrics/lengths.json", "md5": "x"}]},
        "eval": {"deps": [{"path": "artifacts/lengths", "md5": "l1"}], "outs": [{"path": "metrics/eval.json"}]},
        "ingest": {"deps": [], "params": {"params.yaml": {"seed": 0}}, "outs": [{"path": "metrics/ingest.json"}]}}}


def test_stale_stages_from_the_lock():
    params = {"balance.mix.emoji": 2.0, "lengths.pools": ["align"], "seed": 0}
    consistent = _lock("b2", "b2", lengths_mix=2.0)
    assert stale_stages(consistent, params) == set()
    # balance reran (new output) but lengths still records the old one: lengths and everything after it are stale
    partial = _lock("b2", "b1", lengths_mix=2.0)
    assert stale_stages(partial, params) == {"lengths", "eval"}
    assert stale_metric_files(partial, params) == {"lengths", "eval"}
    # a param changed after the last run of the stage that reads it
    assert stale_stages(consistent, {**params, "balance.mix.emoji": 3.0}) == {"balance", "lengths", "eval"}
    assert stale_stages(consistent, {**params, "lengths.pools": ["align", "mid"]}) == {"lengths", "eval"}


def test_cli_compare_reads_json_and_refuses_unknown_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_OV_ROOT", str(tmp_path))  # no git here: staleness is reported as not checked
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(EXP_SHOW))
    ok = CliRunner().invoke(main, ["compare", "--json", str(path), "--metric", "balance:*"])
    assert ok.exit_code == 0, ok.output
    assert "| balance:coverage_after | 0.04 | 0.04 | 0.04 |" in ok.output
    assert "not checked for stale metrics" in ok.output
    bad = CliRunner().invoke(main, ["compare", "--json", str(path), "--metric", "nope:*"])
    assert bad.exit_code == 1 and "no metric matches" in bad.output


@pytest.mark.e2e
def test_queued_mix_sweep_on_the_smoke_build(smoke_project, tmp_path, monkeypatch):
    """Three mixes queued and run up to `balance` only: upstream stages are shared (not rerun), the comparison
    lists each mix with its balance metrics, and marks the downstream metrics it did not recompute as stale."""
    root = tmp_path / "project"
    shutil.copytree(smoke_project, root, symlinks=True)
    mixes = {"emoji2": ["balance.mix.emoji=2.0"], "vqa-half": ["balance.mix.easyvqa=0.5", "balance.mix.digits=2.0"],
             "metaclip": ["balance.method=metaclip_threshold"]}
    for name, sets in mixes.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, *[a for s in sets for a in ("-S", s)], "balance"], root)
    run(["dvc", "exp", "run", "--run-all"], root)
    for name in mixes:
        log = run(["dvc", "queue", "logs", name], root).stdout
        assert "Running stage 'balance'" in log or "Stage 'balance' is cached" in log, log
        assert "Stage 'concept_index' didn't change, skipping" in log, log  # upstream artifacts are shared
    monkeypatch.setenv("LLAVA_OV_ROOT", str(root))
    result = CliRunner().invoke(main, ["compare"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(mixes) <= set(header)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in lines[2:] if line.startswith("| ")}
    emoji = rows["balance.mix.emoji"]
    assert emoji[header.index("emoji2") - 1] == "2" and emoji[header.index("vqa-half") - 1] == "1"
    assert rows["balance.method"][header.index("metaclip") - 1] == "metaclip_threshold"
    assert all(v != "-" and not v.endswith("*") for v in rows["balance:selected"])
    train = rows["train_stage2:final_loss"]
    assert not train[0].endswith("*") and all(train[header.index(n) - 1].endswith("*") for n in mixes)
