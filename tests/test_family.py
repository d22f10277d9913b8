"""The model-family registry: sizes, a new base LLM as one entry plus a profile, and the merge of a tying LLM."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import MLCDVisionConfig, MLCDVisionModel, Qwen3Config, Qwen3ForCausalLM

from llava_ov.base.merge import check_llm, merge
from llava_ov.base.sources import check_llm_config
from llava_ov.model import LlavaOV15ForConditionalGeneration
from llava_ov.model.family import LLAVA_OV_1_5, build_config, family
from llava_ov.params import apply_profile
from llava_ov.plan_inputs import model_shapes
from tests.project import REPO


def test_unknown_family_or_size_names_the_registry():
    with pytest.raises(ValueError, match="unknown model family 'llava_ov_2'"):
        family("llava_ov_2")
    with pytest.raises(ValueError, match=r"llm_base.size '3b' is not a size.*add its shapes.*family.py"):
        LLAVA_OV_1_5.size("3b", "llm_base.size")
    assert family().resolve(family().megatron_rules).__name__ == "rules"  # resolved lazily, by import path


def test_a_new_base_llm_is_one_size_entry_plus_a_profile(tmp_path):
    """Qwen3-1.7B: `profiles/1.7b.yaml` extends the 4b recipe; its shapes come from the registry entry."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    params = apply_profile("1.7b", tmp_path)
    name, lm, vit = model_shapes(params)
    assert (name, lm.layers, lm.hidden, lm.ffn) == ("1.7b", 28, 2048, 6144)
    assert vit.hidden == 1024  # the recipe's RICE-ViT-L/14
    qwen3_1_7b = Qwen3Config(**{k: v for k, v in LLAVA_OV_1_5.sizes["1.7b"].text.items() if k != "rope_theta"})
    check_llm_config(qwen3_1_7b.to_dict(), tmp_path, params["llm_base"]["size"], 151_665)
    with pytest.raises(ValueError, match="not the LLM of size '4b'"):
        check_llm_config(qwen3_1_7b.to_dict(), tmp_path, "4b", 151_665)
    with torch.device("meta"):
        model = LlavaOV15ForConditionalGeneration(build_config("1.7b"))
    language = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    assert abs(language - 2.03e9) / 2.03e9 < 0.01  # 1.7B + an untied lm_head of 151,936 x 2,048
    assert not model.config.tie_word_embeddings and not model.config.text_config.tie_word_embeddings


def test_a_tying_base_llm_merges_into_an_untied_lm_head():
    torch.manual_seed(0)
    vit = MLCDVisionModel(MLCDVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, patch_size=14, image_size=56)).eval()
    llm = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                       tie_word_embeddings=True)).eval()
    tokens = {"image_token_id": 5, "video_token_id": 6, "vision_start_token_id": 3, "vision_end_token_id": 4,
              "bos_token_id": 1, "eos_token_id": 2}
    model = merge(vit, llm, tokens, seed=0, merge_size=2)
    assert not model.config.text_config.tie_word_embeddings
    assert torch.equal(model.lm_head.weight, llm.model.embed_tokens.weight)
    assert model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr()
    assert check_llm(llm, model, torch.randint(0, 64, (2, 8))) == 0.0
