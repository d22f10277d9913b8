"""The LLaVA-OV-1.5 model: packing equivalence, released key layout, parameter counts, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from llava_ov.model import LlavaOV15Config, LlavaOV15ForConditionalGeneration
from llava_ov.model.family import build_config

IMG = 7  # image pad id of the test vocabulary


def tiny_config() -> LlavaOV15Config:
    return build_config("tiny", vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2),
                        text=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, vocab_size=64),
                        image_token_id=IMG)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LlavaOV15ForConditionalGeneration(tiny_config()).eval()


def _sample(gen, grid, text_len):
    t, h, w = grid
    n_tokens = h * w // 4
    ids = torch.cat([torch.randint(10, 64, (3,), generator=gen), torch.full((n_tokens,), IMG),
                     torch.randint(10, 64, (text_len,), generator=gen)])
    return ids, torch.randn(h * w, 588, generator=gen), torch.tensor([grid])


def pack(samples, rows: list[list[int]], capacity: int):
    """A packed batch (docs/interfaces.md): ``rows`` lists the samples of each pack; padding ends each row."""
    ids = torch.zeros(len(rows), capacity, dtype=torch.long)
    pos = torch.zeros(len(rows), capacity, dtype=torch.long)
    bounds, spans = [0], {}
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            s_ids = samples[i][0]
            ids[r, start:start + len(s_ids)] = s_ids
            pos[r, start:start + len(s_ids)] = torch.arange(len(s_ids))
            spans[i] = (r, start, start + len(s_ids))
            start += len(s_ids)
            bounds.append(r * capacity + start)
        pos[r, start:] = torch.arange(capacity - start)  # trailing padding is its own segment
        if start < capacity:
            bounds.append((r + 1) * capacity)
    order = [i for members in rows for i in members]
    return dict(input_ids=ids, position_ids=pos, cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
                pixel_values=torch.cat([samples[i][1] for i in order]),
                image_grid_thw=torch.cat([samples[i][2] for i in order])), spans


def test_packed_logits_equal_each_sample_alone(model):
    gen = torch.Generator().manual_seed(1)
    samples = [_sample(gen, (1, 4, 4), 5), _sample(gen, (1, 2, 6), 9), _sample(gen, (1, 6, 4), 3)]
    batch, spans = pack(samples, rows=[[0, 1], [2]], capacity=30)
    with torch.no_grad():
        alone = [model(input_ids=ids[None], pixel_values=pv, image_grid_thw=grid).logits[0]
                 for ids, pv, grid in samples]
        packed = model(**batch).logits
    for i, ref in enumerate(alone):
        r, start, end = spans[i]
        torch.testing.assert_close(packed[r, start:end], ref, atol=1e-5, rtol=1e-4)
    # and packing is not trivially equal: without boundaries the second sample of a row would differ
    with torch.no_grad():
        leaky = model(**{k: v for k, v in batch.items() if k != "cu_seqlens"}).logits
    r, start, end = spans[1]
    assert not torch.allclose(leaky[r, start:end], alone[1], atol=1e-3)


def test_sample_spanning_two_rows_is_refused(model):
    gen = torch.Generator().manual_seed(3)
    samples = [_sample(gen, (1, 2, 2), 3)]
    batch, _ = pack(samples, rows=[[0], []], capacity=8)
    batch["cu_seqlens"] = torch.tensor([0, 7, 16], dtype=torch.int32)  # second segment crosses the row end
    with pytest.raises(ValueError, match="may not span two rows"):
        model(**batch)


def released_keys(cfg: LlavaOV15Config) -> set[str]:
    """The key set of the released checkpoints (recipe.md), written out independently of the model code."""
    v, t = cfg.vision_config, cfg.text_config
    keys = {"model.visual.patch_embed.proj.weight", "model.visual.class_embedding", "model.visual.class_pos_emb",
            "model.visual.pre_layernorm.weight", "model.visual.pre_layernorm.bias", "lm_head.weight",
            "model.language_model.embed_tokens.weight", "model.language_model.norm.weight"}
    for name in ("ln_q.weight", "ln_q.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"):
        keys.add(f"model.visual.merger.{name}")
    for i in range(v.num_hidden_layers):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"model.visual.blocks.{i}.{part}.weight", f"model.visual.blocks.{i}.{part}.bias"}
    for i in range(t.num_hidden_layers):
        p = f"model.language_model.layers.{i}."
        keys |= {p + k for k in ("input_layernorm.weight", "post_attention_layernorm.weight",
                                 "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                 "self_attn.o_proj.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
                                 "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")}
    return keys


def test_released_layout_loads_strictly_and_generates(model, tmp_path):
    cfg = model.config
    state = model.state_dict()
    assert set(state) == released_keys(cfg)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    loaded, info = LlavaOV15ForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    gen = torch.Generator().manual_seed(2)
    ids, pv, grid = _sample(gen, (1, 4, 4), 2)
    out = loaded.eval().generate(input_ids=ids[None], pixel_values=pv, image_grid_thw=grid, max_new_tokens=5,
                                 do_sample=False, pad_token_id=0)
    assert out.shape == (1, len(ids) + 5)
    # the KV cache is used and gives the same greedy tokens as recomputing from scratch
    no_cache = loaded.generate(input_ids=ids[None], pixel_values=pv, image_grid_thw=grid, max_new_tokens=5,
                               do_sample=False, pad_token_id=0, use_cache=False)
    assert torch.equal(out, no_cache)


def test_save_pretrained_roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    again = LlavaOV15ForConditionalGeneration.from_pretrained(tmp_path)
    for k, v in again.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])


def test_image_token_mismatch_fails_clearly(model):
    ids = torch.tensor([[1, IMG, IMG, 3]])
    with pytest.raises(ValueError, match="4 merged patches .* but 2 pad tokens"):
        model(input_ids=ids, pixel_values=torch.randn(16, 588), image_grid_thw=torch.tensor([[1, 4, 4]]))


@pytest.mark.parametrize("preset,language", [("4b", 4.4e9), ("8b", 8.2e9)])
def test_published_parameter_counts(preset, language):
    with torch.device("meta"):
        m = LlavaOV15ForConditionalGeneration(build_config(preset))
    vit = sum(p.numel() for n, p in m.model.visual.named_parameters() if not n.startswith("merger"))
    lm = sum(p.numel() for p in m.model.language_model.parameters()) + m.lm_head.weight.numel()
    assert abs(vit - 0.3e9) / 0.3e9 < 0.01
    assert abs(lm - language) / language < 0.01
