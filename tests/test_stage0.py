"""Stage-0 merge: key conversion, and checks that pass for a correct merge and fail for a wrong one."""

import pytest
import torch
from transformers import MLCDVisionConfig, MLCDVisionModel, Qwen3Config, Qwen3ForCausalLM

from llava_ov.base.merge import check_llm, check_vit, convert_vit, merge

TOKENS = {"image_token_id": 5, "video_token_id": 6, "vision_start_token_id": 3, "vision_end_token_id": 4}


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
    model = merge(vit, llm, TOKENS, seed=0)
    assert check_vit(vit, model, torch.randn(2, 3, 56, 56), 2) < 1e-4
    assert check_llm(llm, model, torch.randint(0, 64, (2, 10))) == 0.0
    merger = model.model.visual.merger
    assert torch.all(merger.mlp[0].bias == 0) and torch.all(merger.ln_q.weight == 1)
    assert abs(float(merger.mlp[0].weight.detach().std()) - 0.02) < 0.005


def test_checks_catch_a_wrong_merge(parts):
    vit, llm = parts
    model = merge(vit, llm, TOKENS, seed=0)
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
    merge(vit, llm, TOKENS, seed=0).save_pretrained(tmp_path / "a")
    merge(vit, llm, TOKENS, seed=0).save_pretrained(tmp_path / "b")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
