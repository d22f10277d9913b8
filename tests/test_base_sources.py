"""Importing the published base models: wrong or missing folders fail at once, naming the folder and the fix."""

from pathlib import Path

import pytest
from transformers import MLCDVisionConfig, Qwen3Config

from llava_ov.base.sources import check_vit_config, import_llm, import_vit, llm_preset
from llava_ov.model.presets import PRESETS, RICE_VIT_L14


def test_missing_folder_names_the_param_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vit_base.source: .*nothing.* has no config.json.*pretrain"):
        import_vit(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="llm_base.source"):
        import_llm(str(tmp_path / "nothing"), 100)


def test_wrong_vit_shape_is_refused(tmp_path):
    MLCDVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     patch_size=14).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"not RICE-ViT-L/14.*'hidden_size': \(64, 1024\)"):
        import_vit(str(tmp_path))
    check_vit_config(MLCDVisionConfig(**{k: RICE_VIT_L14[k] for k in RICE_VIT_L14 if k != "rope_theta"
                                         and k != "spatial_merge_size"}).to_dict(), tmp_path)


def test_llm_shape_picks_the_preset_or_is_refused(tmp_path):
    for name in ("4b", "8b"):
        text = {k: v for k, v in PRESETS[name]["text"].items() if k != "rope_theta"}
        assert llm_preset(Qwen3Config(**text).to_dict(), Path("x"), 151_665) == name
    with pytest.raises(ValueError, match="vocab 151936 < the tokenizer's 200000"):
        llm_preset(Qwen3Config(**{k: v for k, v in PRESETS["4b"]["text"].items() if k != "rope_theta"}).to_dict(),
                   Path("x"), 200_000)
    Qwen3Config(hidden_size=2048, num_hidden_layers=28).save_pretrained(tmp_path)  # a Qwen3-1.7B-like shape
    with pytest.raises(ValueError, match="matches neither published LLM"):
        import_llm(str(tmp_path), 100)
