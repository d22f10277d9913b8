"""The cost plan: the FLOP model's behaviour, the published 8B figure, inputs measured on built artifacts, the CLI."""

from __future__ import annotations

import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from llava_ov.artifacts import ArtifactWriter
from llava_ov.cli import main
from llava_ov.model.family import LLAVA_OV_1_5
from llava_ov.params import apply_profile, load_params
from llava_ov.plan import (PUBLISHED_8B_STAGE1_5, LMShape, ViTShape, epochs_for_steps, format_table,
                           stage_cost)
from llava_ov.plan_inputs import built_stage_data, model_shapes, training_setup
from tests.project import REPO

P = PUBLISHED_8B_STAGE1_5


def _shapes(name: str) -> tuple[LMShape, ViTShape]:
    text, vision = LLAVA_OV_1_5.sizes[name].text, LLAVA_OV_1_5.sizes[name].vision
    return LMShape.from_hf(text), ViTShape.from_hf(vision, text["hidden_size"])


def _published_plan(**overrides):
    lm, vit = _shapes("8b")
    kwargs = dict(samples=P.samples, text_tokens=P.text_tokens, image_tokens=P.image_tokens, seq_len=P.seq_len,
                  gpus=P.gpus, accelerator=P.accelerator, utilisation=0.45, global_batch=256)
    return stage_cost("stage1_5", lm, vit, **{**kwargs, **overrides})


def test_preset_shapes_match_the_published_sizes():
    lm8, vit = _shapes("8b")
    lm4, _ = _shapes("4b")
    assert lm8.params / 1e9 == pytest.approx(8.2, rel=0.01)
    assert lm4.params / 1e9 == pytest.approx(4.4, rel=0.01)
    assert vit.params / 1e9 == pytest.approx(0.3, rel=0.15)  # 0.30B ViT + the merger into 4096


def test_8b_stage1_5_lands_near_the_published_gpu_hours():
    assert P.gpu_hours == pytest.approx(11_366, abs=1)  # 128 x 3.7 days x 24
    cost = _published_plan()
    assert 0.75 * P.gpu_hours <= cost.gpu_hours <= 1.25 * P.gpu_hours, cost.gpu_hours
    assert cost.days == pytest.approx(cost.gpu_hours / 24 / 128)
    assert cost.llm_tokens == pytest.approx(85e6 * 753)
    assert cost.steps == -(-cost.packs // 256)


def test_cost_responds_to_each_input_the_right_way():
    base = _published_plan()
    assert _published_plan(utilisation=0.225).gpu_hours == pytest.approx(2 * base.gpu_hours)
    assert _published_plan(accelerator="h100").gpu_hours < base.gpu_hours / 3
    assert _published_plan(epochs=2).gpu_hours == pytest.approx(2 * base.gpu_hours)
    half_full = _published_plan(fill=0.5)  # padding costs matmuls like tokens, attention stays per sample
    assert 1.8 * base.gpu_hours < half_full.gpu_hours < 2 * base.gpu_hours
    assert half_full.packs == pytest.approx(2 * base.packs, abs=1)
    assert _published_plan(recompute=False).gpu_hours == pytest.approx(0.75 * base.gpu_hours, rel=0.01)
    # Stage 1 (merger only): the LLM still back-propagates activations (6 of 8 units), the ViT runs forward only
    frozen = _published_plan(trainable_vit=False, trainable_llm=False)
    assert 0.65 * base.gpu_hours < frozen.gpu_hours < 0.75 * base.gpu_hours
    lm4, vit4 = _shapes("4b")
    small = stage_cost("stage1_5", lm4, vit4, samples=P.samples, text_tokens=P.text_tokens,
                       image_tokens=P.image_tokens, seq_len=P.seq_len, gpus=P.gpus)
    assert small.gpu_hours < 0.6 * base.gpu_hours


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown accelerator"):
        _published_plan(accelerator="tpu9")
    with pytest.raises(ValueError, match="does not fit"):
        _published_plan(seq_len=512)
    with pytest.raises(ValueError, match="fill"):
        _published_plan(fill=0)


def test_epochs_for_steps_inverts_the_step_count():
    cost = _published_plan()
    epochs = epochs_for_steps(cost.steps, 256, P.seq_len, 1.0, P.samples, P.text_tokens + P.image_tokens)
    assert epochs == pytest.approx(1.0, rel=1e-3)  # the last step is partly empty


def test_table_format():
    costs = [_published_plan(), _published_plan(epochs=0.5)]
    lines = format_table(costs, "a800", 128, 0.45).splitlines()
    assert lines[0] == "plan on 128 x A800 at 45% utilisation"
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header == ["stage", "samples", "tokens/sample (text + image)", "seq len", "fill", "epochs",
                      "global batch", "steps", "LLM tokens", "ViT patches", "PFLOP", "GPU-hours", "days"]
    assert re.fullmatch(r"\|---(\|---:)+\|", lines[2])
    assert len(lines) == 3 + len(costs) + 1
    assert all(line.count("|") == lines[1].count("|") for line in lines[2:])
    row = [c.strip() for c in lines[3].strip("|").split("|")]
    assert row[:3] == ["stage1_5", "85,000,000", "753 (253 + 500)"]
    assert row[11] == f"{costs[0].gpu_hours:,.0f}"
    total = lines[-1].strip("|").split("|")
    assert total[0].strip() == "total"
    assert total[11].strip() == f"{sum(c.gpu_hours for c in costs):,.0f}"


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """params.yaml + profiles in a scratch root that the CLI finds through LLAVA_OV_ROOT."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    monkeypatch.setenv("LLAVA_OV_ROOT", str(tmp_path))
    return tmp_path


def test_cli_8b_plan_against_the_published_figure(project):
    apply_profile("8b", project)
    result = CliRunner().invoke(main, ["plan", "--stage", "stage1_5", "--samples", "85e6", "--text-tokens",
                                       str(P.text_tokens), "--image-tokens", str(P.image_tokens), "--gpus", "128"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "model 8b: LLM 8.19B" in out
    assert "plan on 128 x A800 at 45% utilisation" in out
    assert "| stage1_5 | 85,000,000 | 753 (253 + 500) | 8,192 | 1.000 | 1 | 256 |" in out  # 8b packs, 1x4x64
    match = re.search(r"= ([\d,]+) GPU-hours; this plan: ([\d,]+) GPU-hours \(ratio ([\d.]+)\)", out)
    assert match, out
    published, planned, ratio = (float(g.replace(",", "")) for g in match.groups())
    assert published == 11_366
    assert planned == round(_published_plan().gpu_hours)
    assert 0.75 <= ratio <= 1.25 and ratio == pytest.approx(planned / published, abs=0.01)


def test_cli_refuses_unusable_requests(project):
    runner = CliRunner()
    both = runner.invoke(main, ["plan", "--samples", "10", "--text-tokens", "5", "--image-tokens", "5"])
    assert both.exit_code == 2 and "give one --stage" in both.output
    partial = runner.invoke(main, ["plan", "--stage", "stage1", "--samples", "10"])
    assert partial.exit_code == 2 and "go together" in partial.output
    unbuilt = runner.invoke(main, ["plan", "--stage", "stage2"])
    assert unbuilt.exit_code == 1 and "dvc repro pack@stage2" in unbuilt.output
    apply_profile("8b", project)
    odd = runner.invoke(main, ["plan", "--stage", "stage1", "--samples", "10", "--text-tokens", "5",
                               "--image-tokens", "5", "--gpus", "3"])
    assert odd.exit_code == 1 and "tp x pp = 2" in odd.output


def test_shapes_and_setup_follow_the_profile(project):
    params = load_params(project)
    name, lm, vit = model_shapes(params)
    assert name == "tiny" and (lm.hidden, lm.layers, lm.vocab) == (192, 4, 4096) and vit.hidden == 96
    assert training_setup(params, "stage1", 1).global_batch == params["train"]["common"]["micro_batch"]
    params = apply_profile("4b", project)
    name, lm, _ = model_shapes(params)
    assert (name, lm.hidden) == ("4b", 2560)
    setups = [training_setup(params, s, 8) for s in ("stage1", "stage1_5", "stage2")]
    assert [s.global_batch for s in setups] == [8, 16, 224]  # the published quick-start batches
    assert [s.trainable for s in setups] == ["merger", "all", "all"]


def test_built_stage_data_is_measured_on_the_artifacts(tmp_path):
    """Packed samples are joined with their exact lengths; fill = tokens / (packs x capacity)."""
    lengths = pa.table({"sample_id": ["a", "b", "c", "d"], "text_tokens": [10, 20, 30, 1000],
                        "image_tokens": [4, 0, 16, 0]})
    with ArtifactWriter(tmp_path / "artifacts" / "lengths", "lengths", 2) as w:
        pq.write_table(lengths, w.dir / "lengths.parquet")
    with ArtifactWriter(tmp_path / "artifacts" / "pack_stage1", "pack", 2, stats={"capacity": 64}) as w:
        pq.write_table(pa.table({"pack": [0, 0, 1], "sample_id": ["a", "b", "c"]}), w.dir / "plan.parquet")
    params = load_params(REPO)
    data = built_stage_data(tmp_path, params, "stage1")
    assert data.samples == 3  # "d" is not in this stage's packs
    assert data.text_tokens == pytest.approx(20) and data.image_tokens == pytest.approx(20 / 3)
    assert data.seq_len == 64 and data.fill == pytest.approx(80 / 128)
    assert data.origin == "artifacts/pack_stage1"
    assert built_stage_data(tmp_path, params, "stage2") is None


@pytest.mark.e2e
def test_cli_plan_on_the_built_smoke_project(smoke_project, monkeypatch):
    import json

    monkeypatch.setenv("LLAVA_OV_ROOT", str(smoke_project))
    result = CliRunner().invoke(main, ["plan", "--params-steps", "--gpus", "1", "--accelerator", "h100"])
    assert result.exit_code == 0, result.output
    for stage in ("stage1", "stage1_5", "stage2"):
        metrics = json.loads((smoke_project / "metrics" / f"pack_{stage}.json").read_text())
        row = next(line for line in result.output.splitlines() if line.startswith(f"| {stage} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[1].replace(",", "")) == metrics["samples"]
        assert float(cells[4]) == pytest.approx(metrics["fill"], abs=1e-3)


def test_8b_profile_dry_run_prints_the_full_plan(tmp_path):
    """Switch a fresh copy to 8b: `dvc repro --dry --force` lists every stage with its command, nothing built.

    (`--force` because without it DVC's dry run stops at the first stage whose upstream output does not exist.)"""
    from tests.project import copy_project, run

    root = copy_project(tmp_path / "project")
    run(["llava-ov", "profile", "8b"], root)
    out = run(["dvc", "repro", "--dry", "--force"], root).stdout
    ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")]
    graph = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    expected = {f"{n}@{i}" if "foreach" in s else n for n, s in graph.items() for i in s.get("foreach", [None])}
    assert sorted(ran) == sorted(expected)
    commands = [line[2:] for line in out.splitlines() if line.startswith("> ")]
    train = [c for c in commands if "-m stages.train" in c]
    assert len(train) == 3
    for cmd in train:  # under torchrun the process count is the 8b profile's (published quick start: 8 GPUs)
        assert "torchrun" not in cmd or "--nproc-per-node=8" in cmd, cmd
