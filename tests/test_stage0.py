"""Stage-0 merge: key conversion, and checks that pass for a correct merge and fail for a wrong one."""

import pytest
import torch
from transformers import MLCDVisionConfig, MLCDVisionModel, Qwen3Config, Qwen3ForCausalLM

from llava_ov.base.merge import check_llm, check_vit, convert_vit, merge

TOKENS = {"image_token_id": 5, "video_token_id": 6, "vision_start_token_id": 3, "vision_end_token_id": 4,
          "bos_token_id": 1, "eos_token_id": 2}


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    vit = MLCDVisionModel(MLCDVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, patch_size=14, image_size=56,
                                           hidden_act="gelu")).eval()
    llm = Qwen3ForCausalLM(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                       tie_word_embeddings=False)).eval()
    return vit, llm


def test_merge_reproduces_both_sources(parts):
    vit, llm = parts
    model = merge(vit, llm, TOKENS, seed=0, merge_size=2)
    assert check_vit(vit, model, torch.randn(2, 3, 56, 56), 2) < 1e-4
    assert check_llm(llm, model, torch.randint(0, 64, (2, 10))) == 0.0
    merger = model.model.visual.merger
    assert torch.all(merger.mlp[0].bias == 0) and torch.all(merger.ln_q.weight == 1)
    assert abs(float(merger.mlp[0].weight.detach().std()) - 0.02) < 0.005


def test_checks_catch_a_wrong_merge(parts):
    vit, llm = parts
    model = merge(vit, llm, TOKENS, seed=0, merge_size=2)
    with torch.no_grad():
        qkv = model.model.visual.blocks[0].attn.qkv.weight
        q, k, v = qkv.chunk(3)
        qkv.copy_(torch.cat([k, q, v]))  # q and k swapped, as a wrong fuse would do
        model.lm_head.weight.mul_(1.01)
    assert check_vit(vit, model, torch.randn(2, 3, 56, 56), 2) > 1e-3
    assert check_llm(llm, model, torch.randint(0, 64, (2, 10))) > 1e-3


def test_hub_prefix_and_unknown_keys():
    state = {"vision_model.class_pos_emb": torch.zeros(1, 4), "vision_model.post_layernorm.weight": torch.ones(2)}
    assert set(convert_vit(state)) == {"model.visual.class_pos_emb"}
    with pytest.raises(KeyError, match="no mapping"):
        convert_vit({"vision_model.head.weight": torch.zeros(1)})


def test_merge_is_deterministic(parts, tmp_path):
    vit, llm = parts
    merge(vit, llm, TOKENS, seed=0, merge_size=2).save_pretrained(tmp_path / "a")
    merge(vit, llm, TOKENS, seed=0, merge_size=2).save_pretrained(tmp_path / "b")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.parametrize("merge_size", [1, 2])
def test_image_merge_size_reaches_the_model(parts, merge_size):
    """``image.merge_size`` decides the merger's window (it used to be taken from the tiny preset)."""
    vit, llm = parts
    model = merge(vit, llm, TOKENS, seed=0, merge_size=merge_size)
    assert model.config.vision_config.spatial_merge_size == merge_size
    assert model.model.visual.merger.mlp[0].in_features == 32 * merge_size ** 2
    assert check_vit(vit, model, torch.randn(1, 3, 56, 56), merge_size) < 1e-4


def test_merged_text_config_keeps_the_base_llm_and_tokenizer_ids(parts):
    vit, llm = parts
    text = merge(vit, llm, TOKENS, seed=0, merge_size=2).config.text_config
    assert (text.bos_token_id, text.eos_token_id) == (1, 2)  # the base LLM names none: the tokenizer's
    assert text.max_position_embeddings == llm.config.max_position_embeddings
    assert text.rope_parameters["rope_theta"] == llm.config.rope_parameters["rope_theta"]
