"""Released checkpoint folders: written here from the documented facts (recipe.md), never from the model code.

A folder in the release on-disk layout (``visual.*``, ``model.layers.*``, ``lm_head``; sharded safetensors with an
index; the published config keys and ``model_type`` strings; ``auto_map`` and a modeling file) must load strictly
into the project's class with the same logits as the same weights given in memory, and fail naming the key when a
tensor is missing, renamed or mis-shaped. What the project writes must be that layout again.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Qwen2VLImageProcessor

from llava_ov.model import LlavaOV15Config, LlavaOV15ForConditionalGeneration
from llava_ov.model.weights import WeightsError
from llava_ov.vision.image_processing import ImageProcessor

# tiny widths, the real vocabulary and special-token ids
VIT = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, merge=2)
LLM = dict(layers=2, hidden=48, ffn=96, heads=4, kv=2, head_dim=12, vocab=151936)
IMAGE_PAD, VIDEO_PAD, VISION_START, BOS, EOS = 151655, 151656, 151652, 151643, 151645


def released_config() -> dict:
    """config.json as the released folders carry it (published keys, model_type strings, remote-code auto_map)."""
    return {
        "architectures": ["LLaVAOneVision1_5_ForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_llavaonevision1_5.Llavaonevision1_5Config",
                     "AutoModelForCausalLM": "modeling_llavaonevision1_5.LLaVAOneVision1_5_ForConditionalGeneration"},
        "model_type": "llavaonevision1_5", "image_token_id": IMAGE_PAD, "video_token_id": VIDEO_PAD,
        "vision_start_token_id": VISION_START, "vocab_size": LLM["vocab"], "torch_dtype": "bfloat16",
        "vision_config": {"model_type": "rice_vit", "depth": VIT["depth"], "embed_dim": VIT["hidden_size"],
                          "hidden_size": VIT["hidden_size"], "intermediate_size": VIT["intermediate_size"],
                          "num_heads": VIT["num_heads"], "in_channels": 3, "patch_size": VIT["patch_size"],
                          "spatial_merge_size": VIT["merge"], "temporal_patch_size": 1, "layer_norm_eps": 1e-5,
                          "text_hidden_size": LLM["hidden"], "hidden_act": "gelu", "initializer_range": 0.02},
        "text_config": {"model_type": "LLaVAOneVision1_5_text", "vocab_size": LLM["vocab"],
                        "hidden_size": LLM["hidden"], "intermediate_size": LLM["ffn"],
                        "num_hidden_layers": LLM["layers"], "num_attention_heads": LLM["heads"],
                        "num_key_value_heads": LLM["kv"], "head_dim": LLM["head_dim"], "hidden_act": "silu",
                        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                        "rope_scaling": None, "attention_bias": False, "tie_word_embeddings": False,
                        "bos_token_id": BOS, "eos_token_id": EOS, "use_sliding_window": False,
                        "sliding_window": None, "max_window_layers": LLM["layers"]},
    }


def released_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of a released folder under its on-disk name, with its shape (recipe.md)."""
    d, i, p, h, f, v = (VIT["hidden_size"], VIT["intermediate_size"], VIT["patch_size"], LLM["hidden"],
                        LLM["ffn"], LLM["vocab"])
    hd = LLM["head_dim"]
    out = {"visual.patch_embed.proj.weight": (d, 3, p, p), "visual.class_embedding": (d,),
           "visual.class_pos_emb": (1, d // VIT["num_heads"] // 2), "visual.pre_layernorm.weight": (d,),
           "visual.pre_layernorm.bias": (d,), "visual.merger.ln_q.weight": (d,), "visual.merger.ln_q.bias": (d,),
           "visual.merger.mlp.0.weight": (4 * d, 4 * d), "visual.merger.mlp.0.bias": (4 * d,),
           "visual.merger.mlp.2.weight": (h, 4 * d), "visual.merger.mlp.2.bias": (h,),
           "model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for n in range(VIT["depth"]):
        b = f"visual.blocks.{n}."
        out |= {b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d),
                b + "attn.proj.bias": (d,), b + "mlp.fc1.weight": (i, d), b + "mlp.fc1.bias": (i,),
                b + "mlp.fc2.weight": (d, i), b + "mlp.fc2.bias": (d,)}
    for n in range(LLM["layers"]):
        b = f"model.layers.{n}."
        out |= {b + "input_layernorm.weight": (h,), b + "post_attention_layernorm.weight": (h,),
                b + "self_attn.q_proj.weight": (LLM["heads"] * hd, h), b + "self_attn.k_proj.weight": (LLM["kv"] * hd, h),
                b + "self_attn.v_proj.weight": (LLM["kv"] * hd, h), b + "self_attn.o_proj.weight": (h, LLM["heads"] * hd),
                b + "self_attn.q_norm.weight": (hd,), b + "self_attn.k_norm.weight": (hd,),
                b + "mlp.gate_proj.weight": (f, h), b + "mlp.up_proj.weight": (f, h), b + "mlp.down_proj.weight": (h, f)}
    return out


def in_memory_name(released: str) -> str:
    """The published class's _checkpoint_conversion_mapping, written out for the test."""
    if released.startswith("visual."):
        return "model." + released
    if released.startswith("model."):
        return "model.language_model." + released[len("model."):]
    return released


def write_released(folder, tensors: dict[str, torch.Tensor], config: dict | None = None, shards: int = 3) -> None:
    """A released folder: bf16 weights sharded over ``shards`` files + index, config, a modeling file, processor."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k].to(torch.bfloat16).contiguous() for k in names[s::shards]}
        save_file(part, folder / file, metadata={"format": "pt"})
        weight_map |= {k: file for k in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config or released_config()))
    # remote code a released folder may carry: loading must never execute it
    (folder / "modeling_llavaonevision1_5.py").write_text("raise RuntimeError('remote code was executed')\n")
    (folder / "configuration_llavaonevision1_5.py").write_text("raise RuntimeError('remote code was executed')\n")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(shape, generator=gen) * 0.05 for k, shape in released_shapes().items()}
    folder = tmp_path_factory.mktemp("released") / "LLaVA-OneVision-1.5-tiny"
    write_released(folder, tensors)
    return folder, tensors


def _inputs():
    gen = torch.Generator().manual_seed(1)
    ids = torch.tensor([[151644, 872, 198, VISION_START] + [IMAGE_PAD] * 4 + [151653, 3838, 374, 419, EOS]])
    return dict(input_ids=ids, pixel_values=torch.randn(16, 588, generator=gen),
                image_grid_thw=torch.tensor([[1, 4, 4]]))


def test_released_folder_loads_strictly_with_the_logits_of_the_same_weights_in_memory(released):
    folder, tensors = released
    loaded = LlavaOV15ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    state = loaded.state_dict()
    assert set(state) == {in_memory_name(k) for k in tensors}
    for name, value in tensors.items():  # every tensor is the file's, none random
        assert torch.equal(state[in_memory_name(name)], value.to(torch.bfloat16).float()), name
    reference = LlavaOV15ForConditionalGeneration(LlavaOV15Config(**{
        k: v for k, v in released_config().items() if k not in ("auto_map", "architectures", "torch_dtype")}))
    reference.load_state_dict({in_memory_name(k): v.to(torch.bfloat16).float() for k, v in tensors.items()},
                              strict=True)
    with torch.no_grad():
        ours, ref = loaded(**_inputs()).logits, reference.eval()(**_inputs()).logits
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    config = loaded.config
    assert config.text_config.rope_parameters["rope_theta"] == 1e6  # the 8B's theta, not the 5e6 default
    assert (config.text_config.bos_token_id, config.text_config.eos_token_id) == (BOS, EOS)
    assert config.text_config.max_position_embeddings == 40960
    assert config.vision_config.num_hidden_layers == VIT["depth"]  # published `depth` under the project's name
    assert not hasattr(config, "auto_map")


def test_auto_class_and_bf16_keep_the_released_dtype(released):
    folder, _ = released
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(model, LlavaOV15ForConditionalGeneration)
    assert model.lm_head.weight.dtype == torch.bfloat16  # dtype "auto": the folder's


@pytest.mark.parametrize("change", ["missing", "renamed", "mis-shaped", "extra"])
def test_one_bad_llm_tensor_is_an_error_naming_it(released, tmp_path, change):
    _, tensors = released
    tensors = dict(tensors)
    key = "model.layers.1.mlp.down_proj.weight"
    if change == "missing":
        del tensors[key]
    elif change == "renamed":
        tensors["model.layers.1.mlp.down.weight"] = tensors.pop(key)
    elif change == "mis-shaped":
        tensors[key] = tensors[key][:, :-1]
    else:
        tensors["model.layers.1.mlp.extra.weight"] = torch.zeros(2)
    write_released(tmp_path / "bad", tensors)
    with pytest.raises(WeightsError) as err:
        LlavaOV15ForConditionalGeneration.from_pretrained(tmp_path / "bad")
    message = str(err.value)
    assert str(tmp_path / "bad") in message
    named = {"missing": [in_memory_name(key)], "renamed": [in_memory_name(key), "model.language_model.layers.1.mlp.down.weight"],
             "mis-shaped": [in_memory_name(key)], "extra": ["model.language_model.layers.1.mlp.extra.weight"]}[change]
    assert all(name in message for name in named), message


def test_pickled_weights_are_refused(released, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(released_config()))
    torch.save({"lm_head.weight": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="pickled weights are never loaded"):
        LlavaOV15ForConditionalGeneration.from_pretrained(folder)


def test_export_is_the_release_layout(released, tmp_path):
    folder, tensors = released
    model = LlavaOV15ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    out = tmp_path / "export"
    model.save_pretrained(out, max_shard_size="4MB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(released_shapes())  # exactly the released names
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all((out / f).is_file() for f in files)
    for file in files:
        with safe_open(out / file, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():
                assert tuple(f.get_slice(key).get_shape()) == released_shapes()[key]
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and not list(out.glob("*.py"))
    assert config["model_type"] == "llavaonevision1_5"
    assert config["architectures"] == ["LLaVAOneVision1_5_ForConditionalGeneration"]
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vocab_size"):
        assert config[key] == released_config()[key]
    vision, text = config["vision_config"], config["text_config"]
    for key, value in released_config()["vision_config"].items():
        assert vision[key] == value, key
    for key in ("model_type", "rope_theta", "rope_scaling", "bos_token_id", "eos_token_id",
                "max_position_embeddings", "num_hidden_layers", "hidden_size", "num_key_value_heads", "head_dim"):
        assert text[key] == released_config()["text_config"][key], key
    again = LlavaOV15ForConditionalGeneration.from_pretrained(out)
    for k, v in again.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_preprocessor_config_is_read_by_transformers_qwen2vl_processor(tmp_path):
    ours = ImageProcessor(min_pixels=3136, max_pixels=40000)
    ours.save(tmp_path)
    theirs = Qwen2VLImageProcessor.from_pretrained(tmp_path)
    assert theirs.temporal_patch_size == 1 and theirs.merge_size == 2 and theirs.patch_size == 14
    image = Image.fromarray((np.random.default_rng(0).random((150, 230, 3)) * 255).astype(np.uint8))
    out = theirs(images=[image], return_tensors="np")
    pixels, grid = ours(image)
    assert tuple(out["image_grid_thw"][0]) == grid
    np.testing.assert_allclose(out["pixel_values"], pixels, rtol=0, atol=1e-6)
    assert ImageProcessor.load(tmp_path) == ours
