"""Importing the published base models: wrong or missing folders fail at once, naming the folder and the fix."""

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import MLCDVisionConfig, Qwen3Config, Qwen3ForCausalLM

from llava_ov.base.sources import check_llm_config, check_vit_config, import_llm, import_vit
from llava_ov.model.family import LLAVA_OV_1_5, RICE_VIT_L14, ModelSize


def test_missing_folder_names_the_param_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vit_base.source: .*nothing.* has no config.json.*pretrain"):
        import_vit(str(tmp_path / "nothing"), "4b")
    with pytest.raises(FileNotFoundError, match="llm_base.source"):
        import_llm(str(tmp_path / "nothing"), "4b", 100)


def test_wrong_vit_shape_is_refused(tmp_path):
    MLCDVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     patch_size=14).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"not the RICE ViT of size '4b'.*'hidden_size': \(64, 1024\)"):
        import_vit(str(tmp_path), "4b")
    check_vit_config(MLCDVisionConfig(**{k: RICE_VIT_L14[k] for k in RICE_VIT_L14 if k != "rope_theta"
                                         and k != "spatial_merge_size"}).to_dict(), tmp_path, "8b")


def test_llm_shape_must_be_the_profiles_size(tmp_path):
    for name in ("4b", "8b"):
        text = {k: v for k, v in LLAVA_OV_1_5.sizes[name].text.items() if k != "rope_theta"}
        check_llm_config(Qwen3Config(**text).to_dict(), Path("x"), name, 151_665)
    eight = Qwen3Config(**{k: v for k, v in LLAVA_OV_1_5.sizes["8b"].text.items() if k != "rope_theta"}).to_dict()
    with pytest.raises(ValueError, match=r"not the LLM of size '4b'.*hidden_size.*set llm_base.size"):
        check_llm_config(eight, Path("x"), "4b", 151_665)
    with pytest.raises(ValueError, match="vocab 151936 < the tokenizer's 200000"):
        check_llm_config(eight, Path("x"), "8b", 200_000)
    with pytest.raises(ValueError, match=r"llm_base.size '3b' is not a size of model family.*family.py"):
        check_llm_config(eight, Path("x"), "3b", 100)


def test_a_sharded_llm_folder_missing_one_tensor_is_refused(tmp_path, monkeypatch):
    """transformers fills a missing tensor at random with a warning; the import must refuse the folder instead."""
    config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    folder = tmp_path / "Qwen3-tiny"
    Qwen3ForCausalLM(config).save_pretrained(folder, max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    dropped = "model.layers.1.mlp.down_proj.weight"
    shard = folder / index["weight_map"].pop(dropped)
    with safe_open(shard, framework="pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if k != dropped}
    save_file(kept, shard, metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    monkeypatch.setitem(LLAVA_OV_1_5.sizes, "tiny-test", ModelSize(RICE_VIT_L14, config.to_dict()))
    with pytest.raises(ValueError, match=rf"llm_base.source .*Qwen3-tiny.*{dropped}.*randomly initialised"):
        import_llm(str(folder), "tiny-test", 64)
