"""Export: the megatron weights of every (pipeline, tensor) rank → one Hugging Face folder (kind ``hf_model``).

Shards are gathered on global rank 0 (from data-parallel rank 0 of each model-parallel position), converted back
with :func:`llava_ov.megatron.convert.megatron_to_hf` and saved with ``save_pretrained`` (safetensors) together
with the tokenizer and image-processor files of the checkpoint the stage started from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from llava_ov.megatron.convert import megatron_to_hf
from llava_ov.model import LlavaOV15ForConditionalGeneration

WEIGHT_FILES = ("config.json", "generation_config.json", "model.safetensors")


def gather_shards(model: torch.nn.Module) -> dict | None:
    """All ranks call this; rank 0 gets ``{(pp_rank, tp_rank): state_dict}``, the others ``None``."""
    mine = None
    if parallel_state.get_data_parallel_rank() == 0:
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
        mine = ((parallel_state.get_pipeline_model_parallel_rank(),
                 parallel_state.get_tensor_model_parallel_rank()), sd)
    everything = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(mine, everything, dst=0)
    if dist.get_rank() != 0:
        return None
    return dict(item for item in everything if item is not None)


def save_hf(shards: dict, hf_config, tp: int, pp: int, source: Path, out: Path) -> None:
    """Write the HF folder: converted weights + config, and every non-weight file of ``source``."""
    state = megatron_to_hf(shards, hf_config, tp=tp, pp=pp)
    model = LlavaOV15ForConditionalGeneration(hf_config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"exported weights do not fit the HF model: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}")
    for name in sorted(p.name for p in source.iterdir() if p.is_file()):
        if name not in WEIGHT_FILES and name != "artifact.json":
            shutil.copyfile(source / name, out / name)
    model.save_pretrained(out)
    if (source / "generation_config.json").is_file():  # eos/pad ids chosen at stage 0 carry over unchanged
        shutil.copyfile(source / "generation_config.json", out / "generation_config.json")
