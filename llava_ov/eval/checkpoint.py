"""Loading a Hugging Face checkpoint folder for evaluation, and the digest that names it in the result cache.

Both the pipeline's own folders (``artifacts/stage0``, ``artifacts/train_<stage>``) and released LLaVA-OV-1.5
folders load through the same path: ``config.json`` + safetensors (never pickles, never remote code), the
tokenizer files, and ``preprocessor_config.json`` for the image processor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llava_ov.artifacts import digest_dir
from llava_ov.model import LlavaOV15ForConditionalGeneration
from llava_ov.text.template import ChatEncoder
from llava_ov.vision.image_processing import CONFIG_NAME, ImageProcessor


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: model in eval mode, its chat encoder and image processor, and its content digest."""

    path: Path
    digest: str
    model: LlavaOV15ForConditionalGeneration
    tokenizer: PreTrainedTokenizerFast
    encoder: ChatEncoder
    images: ImageProcessor


def checkpoint_digest(path: Path | str) -> str:
    """Content digest of a checkpoint folder (every file's path and bytes, ``artifact.json`` excluded).

    Computed from the bytes rather than read from metadata, so a new checkpoint written to the same path always
    gets a new digest and can never be served stale cached answers.
    """
    return digest_dir(path)


def load_checkpoint(path: Path | str, dtype: torch.dtype = torch.float32,
                    max_pixels: int | None = None) -> Checkpoint:
    """Load model, tokenizer and image processor from a Hugging Face folder (offline, no remote code)."""
    path = Path(path)
    for name in ("config.json", CONFIG_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {name}: expected a Hugging Face folder written by "
                                    f"the stage0/train stages or a released LLaVA-OV-1.5 checkpoint")
    digest = checkpoint_digest(path)
    model = LlavaOV15ForConditionalGeneration.from_pretrained(path, dtype=dtype, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    images = ImageProcessor.load(path)
    if max_pixels:
        images = ImageProcessor(**{**images.__dict__, "max_pixels": max_pixels})
    return Checkpoint(path=path, digest=digest, model=model, tokenizer=tokenizer, encoder=ChatEncoder(tokenizer),
                      images=images)
