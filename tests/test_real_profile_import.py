"""The 4b profile's import path end to end, on base-model folders as their hubs ship them (tiny widths).

`tokenizer`, `llm_base`, `vit_base` and `stage0` run exactly as `dvc repro` runs them under the 4b profile (same
params, same folders under `models/`), with only the 4b size's widths shrunk in the size registry so the models
fit a CPU test. The merged stage-0 folder must be in the released layout and load strictly.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llava_ov.model import LlavaOV15ForConditionalGeneration
from llava_ov.model.family import LLAVA_OV_1_5, ModelSize
from llava_ov.model.weights import WeightFiles
from llava_ov.params import apply_profile
from tests.project import REPO
from tests.release_folders import TINY_LLM, TINY_VIT, write_qwen3, write_rice_vit


@pytest.fixture()
def project_4b(tmp_path, monkeypatch):
    root = tmp_path / "project"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "profiles", root / "profiles")
    params = apply_profile("4b", root)
    write_qwen3(root / params["llm_base"]["source"])
    write_rice_vit(root / params["vit_base"]["source"])
    four = LLAVA_OV_1_5.sizes["4b"]
    monkeypatch.setitem(LLAVA_OV_1_5.sizes, "4b", ModelSize({**four.vision, **TINY_VIT}, {**four.text, **TINY_LLM}))
    monkeypatch.chdir(root)
    monkeypatch.delenv("LLAVA_OV_ROOT", raising=False)
    return root, params


def test_4b_profile_imports_hub_folders_and_merges_a_released_layout_stage0(project_4b, monkeypatch):
    from stages import llm_base, stage0, tokenizer, vit_base

    root, params = project_4b
    assert (root / params["llm_base"]["source"] / "model.safetensors.index.json").is_file()  # sharded, as on the hub
    assert (root / params["vit_base"]["source"] / "model.safetensors.index.json").is_file()
    for stage in (tokenizer, llm_base, vit_base, stage0):
        monkeypatch.setattr("sys.argv", [stage.__name__])  # no arguments: the graph's own paths
        stage.main()
    metrics = json.loads((root / "metrics" / "stage0.json").read_text())
    assert metrics["llm_max_abs_diff"] == 0.0 and metrics["vit_max_abs_diff"] < 1e-4
    assert json.loads((root / "metrics" / "llm_base.json").read_text())["size"] == "4b"
    out = root / "artifacts" / "stage0"
    config = json.loads((out / "config.json").read_text())
    assert config["image_token_id"] == 151655 and config["vision_start_token_id"] == 151652
    assert config["text_config"]["bos_token_id"] == 151643 and config["text_config"]["eos_token_id"] == 151645
    assert config["text_config"]["rope_theta"] == 5_000_000.0  # the base LLM's own
    assert config["text_config"]["max_position_embeddings"] == 262144
    assert config["vision_config"]["depth"] == TINY_VIT["num_hidden_layers"]
    names = {stored for _, stored in WeightFiles.open(out).locations.values()}
    assert "visual.merger.mlp.0.weight" in names and "model.layers.0.mlp.down_proj.weight" in names
    assert not any(n.startswith(("model.visual.", "model.language_model.")) for n in names)
    model = LlavaOV15ForConditionalGeneration.from_pretrained(out)
    assert model.lm_head.weight.shape == (TINY_LLM["vocab_size"], TINY_LLM["hidden_size"])
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "Qwen2VLImageProcessor"
    assert (preprocessor["min_pixels"], preprocessor["max_pixels"]) == (3136, 2_560_000)  # the 4b profile's bounds
    assert torch.isfinite(model(input_ids=torch.tensor([[151644, 872, 151645]])).logits).all()
