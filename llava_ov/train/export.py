"""Export: the megatron weights of every (pipeline, tensor) rank → one Hugging Face folder (kind ``hf_model``).

Shards are gathered on global rank 0 (from data-parallel rank 0 of each model-parallel position), converted back
with :func:`llava_ov.megatron.convert.megatron_to_hf` and saved with ``save_pretrained`` (the released layout,
safetensors) together with the tokenizer and image-processor files of the checkpoint the stage started from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from safetensors.torch import load_file, save_file

from llava_ov.megatron.convert import megatron_to_hf
from llava_ov.model import LlavaOV15ForConditionalGeneration

def _carried_over(name: str) -> bool:
    """Files of the init folder the export copies: tokenizer, processor, templates; never weights, configs the
    export writes itself, or code (a released folder may ship modeling code; exported folders carry none)."""
    written = ("config.json", "generation_config.json", "artifact.json", "model.safetensors.index.json")
    return name not in written and not name.endswith((".safetensors", ".py", ".bin", ".pt", ".pth"))


def gather_shards(model: torch.nn.Module, exchange: Path) -> dict | None:
    """All ranks call this; rank 0 gets ``{(pp_rank, tp_rank): state_dict}``, the others ``None``.

    One process keeps its own state dict. With several, data-parallel rank 0 of each model-parallel position
    writes its shard as safetensors into ``exchange`` (beside the stage's checkpoints, on the same file system)
    and rank 0 reads them back: pickling tensors through ``gather_object`` took ~18 s for a 15 MB model on gloo.
    """
    position = (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank())
    # copies: on a CPU the parameters are views into DDP's flat buffers, which safetensors refuses to write
    own = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
           if not k.endswith("_extra_state")}
    if dist.get_world_size() == 1:
        return {position: own}
    if dist.get_rank() == 0:
        shutil.rmtree(exchange, ignore_errors=True)
        exchange.mkdir(parents=True)
    dist.barrier()
    if parallel_state.get_data_parallel_rank() == 0:
        save_file(own, exchange / f"pp{position[0]}_tp{position[1]}.safetensors")
    dist.barrier()
    if dist.get_rank() != 0:
        return None
    shards = {(pp, tp): load_file(exchange / f"pp{pp}_tp{tp}.safetensors")
              for pp in range(parallel_state.get_pipeline_model_parallel_world_size())
              for tp in range(parallel_state.get_tensor_model_parallel_world_size())}
    shutil.rmtree(exchange)
    return shards


def save_hf(shards: dict, hf_config, tp: int, pp: int, source: Path, out: Path, te: bool = False) -> None:
    """Write the HF folder: converted weights (in the dtype they trained in) + config, and every non-weight file
    of ``source``. ``te``: the shards carry Transformer Engine's parameter names."""
    state = megatron_to_hf(shards, hf_config, tp=tp, pp=pp, te=te)
    with torch.device("meta"):  # a 4B/8B model is never materialised twice, nor randomly initialised
        model = LlavaOV15ForConditionalGeneration(hf_config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise RuntimeError(f"exported weights do not fit the HF model: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}")
    model.load_state_dict(state, strict=True, assign=True)
    model.config.dtype = next(iter(state.values())).dtype
    for name in sorted(p.name for p in source.iterdir() if p.is_file()):
        if _carried_over(name):
            shutil.copyfile(source / name, out / name)
    model.save_pretrained(out)
    if (source / "generation_config.json").is_file():  # eos/pad ids chosen at stage 0 carry over unchanged
        shutil.copyfile(source / "generation_config.json", out / "generation_config.json")
