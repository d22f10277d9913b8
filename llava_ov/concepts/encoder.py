"""Image-text dual encoder in one embedding space, through transformers' CLIP classes.

The real profile loads MetaCLIP-H/14 from a local folder (``CLIPModel`` + its tokenizer and image processor); the
default profile trains a small ``CLIPModel`` contrastively on the corpora's (image, caption) pairs with the
pipeline's tokenizer and saves it in the same folder layout — so both go through :class:`ImageTextEncoder`.
"""

from __future__ import annotations

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

from llava_ov.optim import OneCycleAdamW
from llava_ov.vision.image_processing import to_rgb


class ImageTextEncoder:
    """L2-normalised image and text embeddings from a CLIP-style folder."""

    def __init__(self, model: CLIPModel, tokenizer: PreTrainedTokenizerFast, processor: CLIPImageProcessorPil,
                 max_text_len: int) -> None:
        self.model, self.tokenizer, self.processor, self.max_text_len = model.eval(), tokenizer, processor, max_text_len

    @classmethod
    def load(cls, folder: Path | str) -> "ImageTextEncoder":
        model = CLIPModel.from_pretrained(folder)
        return cls(model, AutoTokenizer.from_pretrained(folder), CLIPImageProcessorPil.from_pretrained(folder),
                   model.config.text_config.max_position_embeddings)

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.processor.save_pretrained(folder)

    def image_inputs(self, images: list[bytes]) -> torch.Tensor:
        return self.processor(images=[to_rgb(Image.open(io.BytesIO(b))) for b in images],
                              return_tensors="pt")["pixel_values"]

    def text_inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        eos = self.model.config.text_config.eos_token_id
        ids = [self.tokenizer.encode(t, add_special_tokens=False)[: self.max_text_len - 1] + [eos] for t in texts]
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
        return {"input_ids": input_ids, "attention_mask": mask}

    @torch.no_grad()
    def embed_images(self, images: list[bytes], batch: int = 256) -> np.ndarray:
        out = [F.normalize(_features(self.model.get_image_features(pixel_values=self.image_inputs(images[i:i + batch]))),
                           dim=-1) for i in range(0, len(images), batch)]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch: int = 1024) -> np.ndarray:
        out = []
        for i in tqdm(range(0, len(texts), batch), desc="embed texts", unit="batch", leave=False):
            out.append(F.normalize(_features(self.model.get_text_features(**self.text_inputs(texts[i:i + batch]))),
                                   dim=-1))
        return torch.cat(out).numpy()


def _features(out) -> torch.Tensor:
    """transformers 5 returns a model output from ``get_*_features``; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def train_encoder(images: list[bytes], captions: list[str], tokenizer: PreTrainedTokenizerFast, cfg: dict,
                  seed: int) -> tuple[ImageTextEncoder, dict]:
    """Contrastive (CLIP) training of a small encoder on (image, caption) pairs."""
    torch.manual_seed(seed)
    side = cfg["image_side"]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
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
    encoder = ImageTextEncoder(CLIPModel(config), tokenizer, processor, cfg["max_text_len"])
    pixels = torch.cat([encoder.image_inputs(images[i:i + 512]) for i in range(0, len(images), 512)])
    texts = encoder.text_inputs(captions)
    model = encoder.model.train()
    steps = cfg["epochs"] * (len(images) // cfg["batch_size"])
    opt = OneCycleAdamW(model.parameters(), cfg["lr"], steps, pct_start=0.1, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    with tqdm(total=steps, desc="concept_encoder") as bar:
        for _ in range(cfg["epochs"]):
            order = torch.randperm(len(images), generator=gen)
            for i in range(len(images) // cfg["batch_size"]):
                idx = order[i * cfg["batch_size"]:(i + 1) * cfg["batch_size"]]
                loss = opt.step(model(pixel_values=pixels[idx], input_ids=texts["input_ids"][idx],
                                      attention_mask=texts["attention_mask"][idx], return_loss=True).loss)
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}")
    encoder.model.eval()
    return encoder, {"steps": steps, **opt.loss_summary(), "train_seconds": round(time.perf_counter() - t0, 2)}
