"""LLaVA-OneVision-1.5 as a transformers ``PreTrainedModel`` (no ``trust_remote_code`` needed).

In memory the modules are ``model.visual.*`` (RICE ViT + merger), ``model.language_model.*`` (transformers'
Qwen3) and ``lm_head``; on disk :meth:`~LlavaOV15ForConditionalGeneration.save_pretrained` writes, and
:meth:`~LlavaOV15ForConditionalGeneration.from_pretrained` strictly reads, the released layout
(:mod:`llava_ov.model.weights`). Packed batches: pass ``cu_seqlens`` (sample boundaries over the flattened batch)
and ``position_ids`` that restart per sample; attention then never crosses samples.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, GenerationMixin, PreTrainedModel, Qwen3Model
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava_ov.model.configuration import LlavaOV15Config, LlavaOV15TextConfig, RiceVisionConfig
from llava_ov.model.rice_vit import RiceVisionModel, segment_ids
from llava_ov.model.weights import DEFAULT_MAX_SHARD_SIZE, WeightFiles, check_tensors, save_weights

# the published class name: tools that pick an implementation by `architectures` (vLLM, lmms-eval) find theirs
RELEASED_ARCHITECTURE = "LLaVAOneVision1_5_ForConditionalGeneration"


class LlavaOV15PreTrainedModel(PreTrainedModel):
    config_class = LlavaOV15Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VisionBlock", "Qwen3DecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.vision_config.initializer_range
        if isinstance(module, RiceVisionModel):
            nn.init.normal_(module.class_embedding, std=std)
            nn.init.normal_(module.class_pos_emb, std=std)
            module.reset_rotary()
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class LlavaOV15Model(LlavaOV15PreTrainedModel):
    def __init__(self, config: LlavaOV15Config) -> None:
        super().__init__(config)
        self.visual = RiceVisionModel(config.vision_config)
        self.language_model = Qwen3Model._from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.embed_tokens = value

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              image_grid_thw: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image features scattered into the ``<|image_pad|>`` positions."""
        embeds = self.language_model.embed_tokens(input_ids)
        slots = input_ids == self.config.image_token_id
        n_slots = int(slots.sum())
        if pixel_values is None:
            if n_slots:
                raise ValueError(f"input has {n_slots} <|image_pad|> tokens but no pixel_values")
            return embeds
        features = self.visual(pixel_values, image_grid_thw).to(embeds.dtype)
        if features.shape[0] != n_slots:
            raise ValueError(f"image features and <|image_pad|> tokens disagree: {features.shape[0]} merged patches "
                             f"from grids {image_grid_thw.tolist()} but {n_slots} pad tokens in input_ids; expand each "
                             f"image's pad to h*w/{self.config.vision_config.spatial_merge_size ** 2} tokens with the same image "
                             f"processor settings")
        return embeds.masked_scatter(slots[..., None], features)


def packed_causal_mask(cu_seqlens: torch.Tensor, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Boolean [B, 1, L, L]: causal inside each packed sample, nothing across samples."""
    bounds = set(cu_seqlens.tolist())
    rows = set(range(0, batch * length + 1, length))
    if not rows <= bounds or max(bounds) != batch * length:
        raise ValueError(f"cu_seqlens {cu_seqlens.tolist()} must cover the flattened {batch}x{length} batch and "
                         f"include every row boundary {sorted(rows)}: a sample may not span two rows")
    seg = segment_ids(cu_seqlens, batch * length, device).view(batch, length)
    same = seg[:, :, None] == seg[:, None, :]  # [B, L, L]; a row's segments never span two rows
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return (same & causal)[:, None]


class LlavaOV15ForConditionalGeneration(LlavaOV15PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: LlavaOV15Config) -> None:
        super().__init__(config)
        self.model = LlavaOV15Model(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                past_key_values=None, inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.model.embed(input_ids, pixel_values, image_grid_thw)
        if cu_seqlens is not None:
            batch, length = inputs_embeds.shape[:2]
            attention_mask = packed_causal_mask(cu_seqlens, batch, length, inputs_embeds.device)
        out = self.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                        position_ids=position_ids, past_key_values=past_key_values,
                                        use_cache=use_cache, **kwargs)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None, output_loading_info: bool = False,
                        use_safetensors: bool = True, trust_remote_code: bool = False, **kwargs):
        """Load a local folder strictly, in the released or the in-memory layout (never remote code or pickles).

        Every tensor of the model must be in the folder with its config's shape, and nothing else may be: a
        mismatch raises :class:`~llava_ov.model.weights.WeightsError` naming the folder and the keys, so a folder
        can never load with randomly initialised weights. The model is built on the meta device and takes the
        loaded tensors as its parameters, so a 4B/8B model is never materialised twice.
        """
        config = kwargs.pop("config", None)  # what AutoModelForCausalLM passes along besides the folder
        kwargs = {k: v for k, v in kwargs.items() if not (k in ("revision", "adapter_kwargs") and not v)}
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained got unsupported argument(s) {sorted(kwargs)}; it takes a "
                            f"local folder, dtype, device")
        if not use_safetensors:
            raise ValueError("only safetensors weights are loaded (pickled checkpoints can execute code)")
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)
        config, state = load_state(pretrained_model_name_or_path, config or cls.config_class)
        with torch.device("meta"):
            model = cls(config)
        if dtype is None or dtype == "auto":
            dtype = next(iter(state.values())).dtype
        state = {k: v.to(dtype=dtype, device=device) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.rebuild_buffers(device)
        model.config.dtype = dtype
        folder = Path(pretrained_model_name_or_path)
        if (folder / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(folder)
        model.eval()
        if output_loading_info:
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model

    def rebuild_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the non-persistent buffers (rotary frequencies) after loading onto a meta-built model."""
        self.model.visual.reset_rotary(device)
        text = self.model.language_model
        text.rotary_emb = type(text.rotary_emb)(config=self.config.text_config).to(device)
        leftover = [n for n, b in self.named_buffers() if b.is_meta]
        if leftover:
            raise RuntimeError(f"buffers {leftover} were not rebuilt after loading")

    def save_pretrained(self, save_directory: str | Path, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                        **kwargs) -> None:
        """Write config + generation config + weights in the released layout (no code, no ``auto_map``)."""
        if kwargs:
            raise TypeError(f"{type(self).__name__}.save_pretrained got unsupported argument(s) {sorted(kwargs)}")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [RELEASED_ARCHITECTURE]
        self.config.save_pretrained(folder)
        self.generation_config.save_pretrained(folder)
        save_weights(self.state_dict(), folder, max_shard_size)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, inputs_embeds=None, pixel_values=None,
                                      image_grid_thw=None, **kwargs):
        # inputs_embeds named here so generate() accepts precomputed embeddings (image features already in place)
        inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values,
                                                       inputs_embeds=inputs_embeds, **kwargs)
        first_step = past_key_values is None or past_key_values.get_seq_length() == 0
        if first_step:
            inputs["pixel_values"], inputs["image_grid_thw"] = pixel_values, image_grid_thw
        return inputs


def open_checked(folder: str | Path, config: LlavaOV15Config | type[LlavaOV15Config] = LlavaOV15Config,
                 ) -> tuple[LlavaOV15Config, WeightFiles]:
    """The config and the (unread) weight files of a checkpoint folder, checked strictly against the model.

    ``config`` is a config already read (as ``AutoModel`` passes it) or the class to read the folder's config.json
    with. Names and shapes are checked from the safetensors headers, against a model built on the meta device from
    that config, before any tensor is read; a training rank then reads only its slices
    (:meth:`~llava_ov.model.weights.WeightFiles.slices`).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: expected a local LLaVA-OV-1.5 folder (released, or "
                                f"written by this project's stage0/train stages); nothing is downloaded")
    if isinstance(config, type):
        config = config.from_pretrained(folder)
    files = WeightFiles.open(folder)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LlavaOV15ForConditionalGeneration(config).state_dict().items()}
    check_tensors(folder, files.shapes(), expected)
    return config, files


def load_state(folder: str | Path, config: LlavaOV15Config | type[LlavaOV15Config] = LlavaOV15Config,
               ) -> tuple[LlavaOV15Config, dict[str, torch.Tensor]]:
    """The config and every tensor (in-memory names) of a checkpoint folder, checked by :func:`open_checked`."""
    config, files = open_checked(folder, config)
    return config, files.read()


AutoConfig.register(LlavaOV15Config.model_type, LlavaOV15Config)
AutoConfig.register(RiceVisionConfig.model_type, RiceVisionConfig)
AutoConfig.register(LlavaOV15TextConfig.model_type, LlavaOV15TextConfig)
AutoModelForCausalLM.register(LlavaOV15Config, LlavaOV15ForConditionalGeneration)
