"""Image-text dual encoder in one embedding space, through transformers' CLIP classes.

The real profiles load MetaCLIP-H/14 from a local folder (``CLIPModel`` + its tokenizer and image processor, checked
by :mod:`llava_ov.concepts.folder`); the default profile trains a small ``CLIPModel`` contrastively on the corpora's
(image, caption) pairs with the pipeline's tokenizer and saves it in the same folder layout — so both go through
:class:`ImageTextEncoder`. Images are preprocessed one at a time by the folder's own image processor, so an image it
cannot read is one rejection with its reason, never the end of a batch.
"""

from __future__ import annotations

import copy
import io
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava_ov.concepts.folder import check_encoder_folder
from llava_ov.optim import OneCycleAdamW
from llava_ov.vision.image_processing import strict_decoding, to_rgb


class UnreadableImage(ValueError):
    """An image the encoder's processor cannot turn into pixels; the message is the rejection reason."""


class ImageTextEncoder:
    """L2-normalised image and text embeddings from a CLIP-style folder, on one device in one dtype."""

    def __init__(self, model: CLIPModel, tokenizer: PreTrainedTokenizerFast, processor: CLIPImageProcessorPil,
                 max_text_len: int) -> None:
        self.model, self.tokenizer, self.processor, self.max_text_len = model.eval(), tokenizer, processor, max_text_len

    @classmethod
    def load(cls, folder: Path | str, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> "ImageTextEncoder":
        """Load a checked CLIP folder (safetensors only, no code from the folder) onto ``device`` in ``dtype``."""
        check_encoder_folder(folder)
        model = CLIPModel.from_pretrained(folder, use_safetensors=True, dtype=dtype).to(device)
        return cls(model, AutoTokenizer.from_pretrained(folder), CLIPImageProcessorPil.from_pretrained(folder),
                   model.config.text_config.max_position_embeddings)

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.processor.save_pretrained(folder)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def pixels(self, data: bytes) -> torch.Tensor:
        """One image's ``pixel_values`` [3, H, W] (float32) by the folder's processor; :class:`UnreadableImage` if
        the bytes do not decode or the processor refuses them."""
        try:
            with strict_decoding(), Image.open(io.BytesIO(data)) as image:
                rgb = to_rgb(image)
            return self.processor(images=[rgb], return_tensors="pt")["pixel_values"][0]
        except Exception as e:  # noqa: BLE001 - any decoder/processor failure is this one image's rejection
            raise UnreadableImage(f"unreadable image ({type(e).__name__}: {e})") from None

    def text_inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids with the tokenizer's own special tokens (CLIP's BOS), ending in EOS where CLIP pools."""
        eos = self.tokenizer.eos_token_id
        eos = self.model.config.text_config.eos_token_id if eos is None else eos
        ids = []
        for t in texts:
            tokens = self.tokenizer.encode(t, add_special_tokens=True)
            tokens = tokens[:-1] if tokens and tokens[-1] == eos else tokens
            ids.append(tokens[: self.max_text_len - 1] + [eos])
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    @torch.no_grad()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings [B, D] (float32, on the model's device) of a batch of ``pixel_values``."""
        out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        return F.normalize(_features(out).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch: int = 1024) -> np.ndarray:
        """Unit text embeddings [N, D] float32 (on the CPU), ``batch`` texts per forward pass."""
        out = []
        for i in tqdm(range(0, len(texts), batch), desc="embed texts", unit="batch", leave=False):
            feats = _features(self.model.get_text_features(**self.text_inputs(texts[i:i + batch])))
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out).numpy()


def _features(out) -> torch.Tensor:
    """transformers 5 returns a model output from ``get_*_features``; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_tokenizer(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """A copy of the pipeline's tokenizer that ends texts as CLIP does: ``<|endoftext|>`` as EOS and pad, where the
    text tower pools (its first occurrence). The pipeline's EOS ``<|im_end|>`` is id 2, and for
    ``eos_token_id == 2`` transformers keeps CLIP's legacy pooling at the highest token id of each text instead."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.eos_token = tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def new_encoder(tokenizer: PreTrainedTokenizerFast, cfg: dict, seed: int) -> ImageTextEncoder:
    """A small CLIP for the default profile, initialised from ``seed``, with its image processor."""
    torch.manual_seed(seed)
    side = cfg["image_side"]
    tokenizer = clip_tokenizer(tokenizer)
    eos = tokenizer.eos_token_id
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=cfg["width"], intermediate_size=cfg["width"] * 4,
                         num_hidden_layers=cfg["text_layers"], num_attention_heads=4,
                         max_position_embeddings=cfg["max_text_len"], eos_token_id=eos,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=eos),
        vision_config=dict(hidden_size=cfg["width"], intermediate_size=cfg["width"] * 4,
                           num_hidden_layers=cfg["vision_layers"], num_attention_heads=4, image_size=side,
                           patch_size=14),
        projection_dim=cfg["width"])
    processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return ImageTextEncoder(CLIPModel(config), tokenizer, processor, cfg["max_text_len"])


def train_encoder(encoder: ImageTextEncoder, pixels: torch.Tensor, captions: list[str], cfg: dict,
                  seed: int) -> dict:
    """Contrastive (CLIP) training of a small encoder on (pixels, caption) pairs, in place; returns its metrics."""
    texts = encoder.text_inputs(captions)
    model = encoder.model.train()
    steps = cfg["epochs"] * (len(pixels) // cfg["batch_size"])
    opt = OneCycleAdamW(model.parameters(), cfg["lr"], steps, pct_start=0.1, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    with tqdm(total=steps, desc="concept_encoder") as bar:
        for _ in range(cfg["epochs"]):
            order = torch.randperm(len(pixels), generator=gen)
            for i in range(len(pixels) // cfg["batch_size"]):
                idx = order[i * cfg["batch_size"]:(i + 1) * cfg["batch_size"]]
                loss = opt.step(model(pixel_values=pixels[idx], input_ids=texts["input_ids"][idx],
                                      attention_mask=texts["attention_mask"][idx], return_loss=True).loss)
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}")
    encoder.model.eval()
    return {"steps": steps, **opt.loss_summary(), "train_seconds": round(time.perf_counter() - t0, 2)}
